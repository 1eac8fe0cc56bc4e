// The Cluster page: copy buttons, and live updates from healthd with a long
// poll (GET /dashboard/clusters/{id}/live?after=N), no reload.
(function () {
  'use strict';

  var announcer = document.getElementById('announcer');
  function announce(text) {
    if (!announcer) { return; }
    announcer.textContent = '';
    window.setTimeout(function () { announcer.textContent = text; }, 50);
  }

  // The skip link moves the keyboard focus too, not only the scroll.
  document.addEventListener('click', function (event) {
    var skip = event.target.closest && event.target.closest('a.skip');
    var target = document.getElementById('main');
    if (skip && target) {
      event.preventDefault();
      if (!target.hasAttribute('tabindex')) { target.setAttribute('tabindex', '-1'); }
      target.focus();
      target.scrollIntoView();
    }
  });

  // Copy buttons: the text of the element named by data-copy-target.
  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    return new Promise(function (resolve, reject) {
      var area = document.createElement('textarea');
      area.value = text;
      area.setAttribute('readonly', '');
      area.style.position = 'fixed';
      area.style.opacity = '0';
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
      document.body.removeChild(area);
      if (ok) { resolve(); } else { reject(new Error('copy refused')); }
    });
  }
  document.addEventListener('click', function (event) {
    var button = event.target.closest && event.target.closest('button[data-copy-target]');
    if (!button) { return; }
    var source = document.getElementById(button.getAttribute('data-copy-target'));
    if (!source) { return; }
    var label = button.getAttribute('aria-label') || 'value';
    copyText(source.textContent).then(function () {
      button.textContent = 'Copied';
      button.classList.add('copied');
      announce(label.replace(/^Copy /, '') + ' copied to the clipboard');
    }, function () {
      button.textContent = 'Select and copy';
      announce('Could not copy; select the text and copy it');
    });
    window.setTimeout(function () {
      button.textContent = 'Copy';
      button.classList.remove('copied');
    }, 2000);
  });

  // "12 s ago" next to each time.
  function ago(since) {
    var seconds = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 1000));
    if (isNaN(seconds)) { return ''; }
    if (seconds < 60) { return seconds + ' s ago'; }
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) { return minutes + ' min ago'; }
    var hours = Math.floor(minutes / 60);
    if (hours < 48) { return hours + ' h ago'; }
    return Math.floor(hours / 24) + ' days ago';
  }
  function refreshAgo() {
    var spans = document.querySelectorAll('.ago[data-since]');
    for (var i = 0; i < spans.length; i++) {
      spans[i].textContent = ago(spans[i].getAttribute('data-since'));
    }
  }
  refreshAgo();
  window.setInterval(refreshAgo, 5000);

  var main = document.querySelector('main[data-cluster]');
  if (!main) { return; }
  var cluster = main.getAttribute('data-cluster');
  var after = 0;
  var instance = null;
  var liveStatus = document.getElementById('live-status');
  var liveText = liveStatus && liveStatus.querySelector('.live-text');

  function setLive(state, text) {
    if (!liveStatus) { return; }
    liveStatus.setAttribute('data-live', state);
    if (liveText) { liveText.textContent = text; }
  }

  function label(state) { return state === 'drain' ? 'draining' : state; }

  function states() {
    var found = {};
    var rows = document.querySelectorAll('#mta-rows tr[data-mta]');
    for (var i = 0; i < rows.length; i++) {
      found[rows[i].getAttribute('data-mta')] = rows[i].getAttribute('data-state');
    }
    return found;
  }

  function render(body) {
    var before = states();
    var rows = document.getElementById('mta-rows');
    if (rows) { rows.innerHTML = body.mtas_html; }  // escaped by the server
    var list = document.getElementById('transitions');
    if (list) { list.innerHTML = body.transitions_html; }
    var summary = document.getElementById('mta-summary');
    if (summary) { summary.textContent = body.summary; }
    (body.nav || []).forEach(function (entry) {
      var counts = document.querySelectorAll('[data-count]');
      for (var i = 0; i < counts.length; i++) {
        if (counts[i].getAttribute('data-count') === entry.id) {
          counts[i].textContent = entry.count;
          var parts = entry.count.split(' ')[0].split('/');
          counts[i].classList.toggle('all-up', parts[0] === parts[1] && parts[1] !== '0');
        }
      }
    });
    var changes = [];
    (body.data.mtas || []).forEach(function (mta) {
      var was = before[mta.name];
      if (was !== undefined && was !== mta.state) {
        var row = document.querySelector('#mta-rows tr[data-mta="' + CSS.escape(mta.name) + '"]');
        if (row) { row.classList.add('changed'); }
        changes.push(mta.name + ' is now ' + label(mta.state) + (mta.reason ? ': ' + mta.reason : ''));
      }
    });
    if (changes.length) { announce(changes.join('. ')); }
    refreshAgo();
  }

  var delay = 0;
  function poll() {
    var url = '/dashboard/clusters/' + encodeURIComponent(cluster) + '/live?after=' + after;
    fetch(url, { credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (response) {
        if (response.status === 401) {
          setLive('offline', 'Signed out');
          window.location.assign('/');
          return null;
        }
        if (response.status === 404) {
          setLive('offline', 'Cluster no longer available');
          return null;
        }
        if (!response.ok) { throw new Error('HTTP ' + response.status); }
        return response.json();
      })
      .then(function (body) {
        if (!body) { return; }
        if (instance !== null && body.instance !== instance) { announce('healthd restarted'); }
        instance = body.instance;
        render(body);
        after = body.generation;
        main.setAttribute('data-generation', String(after));
        setLive('live', 'Live');
        delay = 0;
        poll();
      })
      .catch(function () {
        setLive('offline', 'Reconnecting…');
        delay = Math.min(delay ? delay * 2 : 500, 10000);
        window.setTimeout(poll, delay);
      });
  }
  // The first poll asks for anything after 0, which healthd answers at once:
  // the page shows "Live" only once healthd has answered.
  after = 0;
  poll();
})();
