//! The Cluster page in a real browser: healthd in-process against fake MTAs
//! on 127.7.x.y, headless chromium driven over WebDriver (chromedriver).
//! The fakes listen on the production ports (SMTP 587, HTTPS 443) so the
//! card shows what a customer sees: the tests with fakes run in a user and
//! network namespace of their own (`fleet::testkit::namespace`), where
//! they may.
//! Screenshots land in `target/dashboard-screenshots/`.

mod common;
mod dashboard_browser;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{write_configs, Fake, Healthd, Pki, ADMIN_TOKEN};
use dashboard_browser::Browser;
use fleet::feed::MtaState;
use fleet::testkit::process::eventually;
use serde_json::{json, Value};

const ACME: &str = "acme-token";
const GLOBEX: &str = "globex-token";

fn ip(test: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 7, test, host)
}

/// Three clusters: acme owns a1b2c3d4 (two MTAs, 500/hr) and c9d0e1f2 (one
/// drained MTA), globex owns e5f6a7b8.
fn fleet(test: u8) -> String {
    let hash = fleet::password::hash_password("not-the-password").unwrap();
    fleet::testkit::FleetToml::new("127.7.255.53")
        .ports(&[587, 25, 2587], 443)
        .cluster("a1b2c3d4", &["yourdomain.com"])
        .set("rate_limit = \"500/hr\"")
        .credential("your-credential", &hash)
        .mta("mta-1", ip(test, 11))
        .mta("mta-2", ip(test, 12))
        .cluster("c9d0e1f2", &["acme-two.example"])
        .mta("mta-3", ip(test, 13))
        .set("  drain = true")
        .cluster("e5f6a7b8", &["globex.example"])
        .set("rate_limit = \"1000/day\"")
        .mta("mta-4", ip(test, 21))
        .account("acme", &common::sha256(ACME), &["a1b2c3d4", "c9d0e1f2"])
        .account("globex", &common::sha256(GLOBEX), &["e5f6a7b8"])
        .to_string()
}

struct Setup {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    healthd: Healthd,
    fakes: Vec<(&'static str, Fake)>,
}

impl Setup {
    /// healthd on 127.7.`test`.1 and fakes for mta-1, mta-2 and mta-4
    /// (`with_fakes`); mta-3 never answers (it is drained).
    async fn start(test: u8, with_fakes: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let mut fakes = Vec::new();
        if with_fakes {
            let tls = pki.server(&[
                "c-a1b2c3d4.unmta.net",
                "c-c9d0e1f2.unmta.net",
                "c-e5f6a7b8.unmta.net",
            ]);
            for (name, host) in [("mta-1", 11), ("mta-2", 12), ("mta-4", 21)] {
                let fake = Fake::start(IpAddr::V4(ip(test, host)), 587, 443, tls.clone()).await;
                fakes.push((name, fake));
            }
        }
        let config = write_configs(dir.path(), ip(test, 1), &pki, &fleet(test), "");
        let healthd = Healthd::start(&config).await;
        Setup {
            dir,
            config,
            healthd,
            fakes,
        }
    }

    fn fake(&mut self, name: &str) -> &mut Fake {
        &mut self.fakes.iter_mut().find(|(n, _)| *n == name).unwrap().1
    }
}

/// Polls the page until MTA `name` shows `state` in the table.
async fn wait_row(browser: &Browser, name: &str, state: &str, bound: Duration) -> Duration {
    browser
        .wait_until(
            bound,
            &format!("{name} shown {state}"),
            &format!(
                "var r = document.querySelector('#mta-rows tr[data-mta=\"{name}\"]'); \
                 return !!r && r.getAttribute('data-state') === '{state}';"
            ),
        )
        .await
}

async fn sidebar(browser: &Browser) -> Vec<String> {
    let ids = browser
        .js(
            "return Array.from(document.querySelectorAll('#cluster-list a')).map(a => a.dataset.cluster);",
            vec![],
        )
        .await;
    serde_json::from_value(ids).unwrap()
}

/// Every request the page made went to `origin`.
async fn assert_same_origin(browser: &Browser, origin: &str) {
    // Chromium's own pages (the first new tab) load chrome:// and data:
    // resources from inside the browser; every other request counts.
    let urls: Vec<String> = browser
        .requested_urls()
        .await
        .into_iter()
        .filter(|u| !u.starts_with("chrome://") && !u.starts_with("data:"))
        .collect();
    for own in [
        "/dashboard/assets/dashboard.css",
        "/dashboard/assets/dashboard.js",
        "/dashboard/clusters/",
    ] {
        assert!(
            urls.iter()
                .any(|u| u.starts_with(&format!("{origin}{own}"))),
            "the performance log misses the page's own {own}: {urls:?}"
        );
    }
    let foreign: Vec<_> = urls
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")))
        .collect();
    assert!(foreign.is_empty(), "requests to another host: {foreign:?}");
    let entries = browser
        .js(
            "return performance.getEntries().map(e => e.name).filter(n => n.indexOf('://') > 0);",
            vec![],
        )
        .await;
    for name in entries.as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            name.starts_with(&format!("{origin}/")),
            "resource {name} is not from {origin}"
        );
    }
}

/// healthd with fakes, a browser signed in as `token` through the link
/// local-cluster prints (`/?token=…`), on the first cluster's page.
async fn signed_in(test: u8, token: &str) -> (Setup, Browser, String) {
    let setup = Setup::start(test, true).await;
    let base = setup.healthd.url.clone();
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/?token={token}")).await;
    (setup, browser, base)
}

async fn wait_live(browser: &Browser) {
    browser
        .wait_until(
            Duration::from_secs(5),
            "Live",
            "return document.getElementById('live-status').dataset.live === 'live';",
        )
        .await;
}

async fn stop(setup: Setup, browser: Browser) {
    drop(browser);
    setup.healthd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_signs_in_by_link_and_an_account_sees_only_its_clusters() {
    fleet::in_own_namespace!();
    let setup = Setup::start(1, true).await;
    let base = setup.healthd.url.clone();
    let browser = Browser::start().await;

    // Nobody signed in: the form, and no cluster data at all.
    browser.goto(&format!("{base}/clusters/a1b2c3d4")).await;
    assert!(browser
        .text("form[action='/login'] label[for=token]")
        .await
        .is_some());
    let text = browser.body_text().await;
    assert!(
        !text.contains("unmta.net") && !text.contains("mta-1"),
        "{text}"
    );
    browser.screenshot("login.png").await;

    // The line local-cluster prints: /?token=… signs in and drops the token.
    browser.goto(&format!("{base}/?token={ACME}")).await;
    assert_eq!(browser.url().await, format!("{base}/"));
    assert_eq!(
        browser.js("return document.cookie;", vec![]).await,
        json!(""),
        "the cookie is HttpOnly"
    );
    assert_eq!(
        browser.text("#cluster-title").await.as_deref(),
        Some("a1b2c3d4")
    );
    assert_eq!(sidebar(&browser).await, ["a1b2c3d4", "c9d0e1f2"]);
    let text = browser.body_text().await;
    assert!(
        !text.contains("e5f6a7b8") && !text.contains("globex"),
        "{text}"
    );

    // The other cluster, through the sidebar: unlimited, a draining MTA.
    browser
        .click("#cluster-list a[data-cluster='c9d0e1f2']")
        .await;
    browser
        .wait_until(
            Duration::from_secs(5),
            "on c9d0e1f2",
            "return !!document.getElementById('cluster-title') && document.getElementById('cluster-title').textContent === 'c9d0e1f2';",
        )
        .await;
    assert_eq!(
        browser.text("#rate-limit").await.as_deref(),
        Some("Unlimited")
    );
    assert_eq!(
        browser
            .text("#mta-rows tr[data-mta='mta-3'] .state")
            .await
            .as_deref(),
        Some("draining")
    );
    assert_eq!(
        browser
            .text("#cluster-list a[aria-current=page]")
            .await
            .map(|t| t.starts_with("c9d0e1f2")),
        Some(true)
    );

    // Someone else's cluster by its address: not found, nothing of it shown.
    browser.goto(&format!("{base}/clusters/e5f6a7b8")).await;
    assert_eq!(browser.text("h1").await.as_deref(), Some("Not found"));
    let text = browser.body_text().await;
    assert!(
        !text.contains("c-e5f6a7b8") && !text.contains("mta-4"),
        "{text}"
    );
    stop(setup, browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_card_shows_the_apis_values_in_the_fleets_port_order() {
    fleet::in_own_namespace!();
    let (setup, browser, _) = signed_in(4, ACME).await;
    let (status, api) = setup
        .healthd
        .get("/api/v1/clusters/a1b2c3d4", Some(ACME))
        .await;
    assert_eq!(status, 200);
    let connection = &api["data"]["connection"];
    assert_eq!(
        connection["http_endpoint"],
        "https://c-a1b2c3d4.unmta.net/api/inject/v1"
    );
    assert_eq!(
        browser.text("#http-endpoint").await.as_deref(),
        Some("https://c-a1b2c3d4.unmta.net/api/inject/v1")
    );
    assert_eq!(
        browser.text("#smtp-host").await.as_deref(),
        Some("c-a1b2c3d4.unmta.net")
    );
    let ports = browser
        .js(
            "return Array.from(document.querySelectorAll('#smtp-ports tbody tr')).map(r => ({ \
               port: Number(r.dataset.port), \
               use_case: r.querySelector('.use-case').textContent, \
               starttls_required: !!r.querySelector('.tls') && r.querySelector('.tls').textContent === 'STARTTLS required', \
               copy: !!r.querySelector('button.copy') }));",
            vec![],
        )
        .await;
    let expected: Vec<Value> = connection["smtp_ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p["copy"] = json!(true);
            p
        })
        .collect();
    assert_eq!(ports, Value::Array(expected));
    // The fleet's order, its first port the recommended one.
    let listed: Vec<(u64, &str)> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_u64().unwrap(), p["use_case"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            (587, "recommended: submission"),
            (25, "standard SMTP port (often blocked by ISPs)"),
            (2587, "alternative when 587 is blocked"),
        ]
    );
    for id in ["http-endpoint", "smtp-host"] {
        assert!(
            browser
                .text(&format!("button.copy[data-copy-target='{id}']"))
                .await
                .is_some(),
            "no copy button for {id}"
        );
    }
    assert_eq!(
        browser.text("#rate-limit").await.as_deref(),
        Some("500/hr per MTA")
    );
    let swaks = browser.text("#swaks-example").await.unwrap();
    assert!(
        swaks.starts_with("swaks --server c-a1b2c3d4.unmta.net --port 587"),
        "{swaks}"
    );
    assert!(
        swaks.contains("--auth-user your-credential") && swaks.contains("sender@yourdomain.com"),
        "{swaks}"
    );
    let curl = browser.text("#curl-example").await.unwrap();
    assert!(
        curl.starts_with("curl -X POST https://c-a1b2c3d4.unmta.net/api/inject/v1 \\"),
        "{curl}"
    );

    // A copy button puts the value on the clipboard.
    browser.grant("clipboard-read").await;
    browser.grant("clipboard-write").await;
    browser
        .click("button.copy[data-copy-target='http-endpoint']")
        .await;
    browser
        .wait_until(
            Duration::from_secs(5),
            "the copy button saying Copied",
            "return document.querySelector(\"button.copy[data-copy-target='http-endpoint']\").textContent === 'Copied';",
        )
        .await;
    let clipboard = browser
        .js_async(
            "var done = arguments[arguments.length - 1]; \
             navigator.clipboard.readText().then(done, e => done('error: ' + e));",
            vec![],
        )
        .await;
    assert_eq!(
        clipboard,
        json!("https://c-a1b2c3d4.unmta.net/api/inject/v1")
    );
    stop(setup, browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_mtas_live_loading_only_from_healthd() {
    fleet::in_own_namespace!();
    let (setup, browser, base) = signed_in(5, ACME).await;
    wait_row(&browser, "mta-1", "up", Duration::from_secs(15)).await;
    wait_row(&browser, "mta-2", "up", Duration::from_secs(15)).await;
    wait_live(&browser).await;
    let latency = browser
        .text("#mta-rows tr[data-mta='mta-1'] td.num")
        .await
        .unwrap();
    assert!(latency.ends_with(" ms"), "{latency}");
    // The whole page in one picture.
    browser.set_window(1280, 1900).await;
    browser.screenshot("cluster-a1b2c3d4.png").await;

    // Everything the page loaded came from healthd itself.
    assert_same_origin(&browser, base.trim_end_matches('/')).await;
    let console = browser.console().await;
    assert!(
        console.iter().all(|m| !m.contains("SEVERE")),
        "errors in the page: {console:?}"
    );
    stop(setup, browser).await;
}

/// Tab reaches the skip link, Enter jumps to the content, the next Tab is
/// the first copy button, Enter copies; every control has a name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_works_with_the_keyboard_alone() {
    fleet::in_own_namespace!();
    let (setup, browser, _) = signed_in(6, ACME).await;
    wait_row(&browser, "mta-1", "up", Duration::from_secs(15)).await;
    browser.grant("clipboard-write").await;
    browser.keys(&["\u{E004}"]).await;
    let focused = browser.focused().await;
    assert!(focused.starts_with("a#.skip"), "first Tab: {focused}");
    browser.keys(&["\u{E007}"]).await;
    let focused = browser.focused().await;
    assert!(
        focused.starts_with("main#main"),
        "after Enter on the skip link: {focused}"
    );
    browser.keys(&["\u{E004}"]).await;
    let focused = browser.focused().await;
    assert!(
        focused.ends_with("Copy HTTP endpoint"),
        "Tab after the skip link: {focused}"
    );
    browser.keys(&["\u{E007}"]).await;
    browser
        .wait_until(
            Duration::from_secs(5),
            "the focused copy button saying Copied",
            "return document.activeElement.textContent === 'Copied';",
        )
        .await;
    let unnamed = browser
        .js(
            "return Array.from(document.querySelectorAll('button, a, input, [tabindex]')) \
               .filter(e => !(e.getAttribute('aria-label') || e.getAttribute('aria-labelledby') || \
                              (e.labels && e.labels.length) || e.textContent.trim() || e.tagName === 'MAIN')) \
               .map(e => e.outerHTML.slice(0, 80));",
            vec![],
        )
        .await;
    assert_eq!(unnamed, json!([]), "controls without a name");
    stop(setup, browser).await;
}

/// Down to a phone: nothing wider than the screen, and at 390 px each MTA's
/// state and last failure are shown whole, without a sideways scroll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_fits_a_phone_with_each_mtas_state_and_failure_in_view() {
    fleet::in_own_namespace!();
    let (mut setup, browser, _) = signed_in(7, ACME).await;
    wait_row(&browser, "mta-1", "up", Duration::from_secs(15)).await;
    setup.fake("mta-2").kill();
    wait_row(&browser, "mta-2", "down", Duration::from_secs(10)).await;
    for width in [1000, 900, 800, 700, 390] {
        browser.set_window(width, 1400).await;
        let overflow = browser
            .js(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await;
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "at {width}px the page is {overflow}px too wide"
        );
        if width == 900 {
            browser.screenshot("cluster-a1b2c3d4-medium.png").await;
        }
    }
    let clipped = browser
        .js(
            "var wrap = document.querySelector('.table-wrap'); \
             var box = wrap.getBoundingClientRect(); \
             var out = []; \
             if (wrap.scrollWidth > wrap.clientWidth) out.push('the table scrolls sideways by ' + (wrap.scrollWidth - wrap.clientWidth) + 'px'); \
             document.querySelectorAll('#mta-rows tr[data-mta]').forEach(function (row) { \
               ['.state', 'td.reason'].forEach(function (css) { \
                 var r = row.querySelector(css).getBoundingClientRect(); \
                 if (r.width === 0 || r.left < box.left - 0.5 || r.right > box.right + 0.5) \
                   out.push(row.dataset.mta + ' ' + css + ' at ' + r.left + '..' + r.right + ' outside ' + box.left + '..' + box.right); \
               }); \
             }); \
             return out;",
            vec![],
        )
        .await;
    assert_eq!(clipped, json!([]), "at 390px");
    let reason = browser
        .text("#mta-rows tr[data-mta='mta-2'] td.reason")
        .await
        .unwrap();
    assert!(
        reason.contains("smtp:") || reason.contains("https:"),
        "{reason}"
    );
    browser.screenshot("cluster-a1b2c3d4-narrow.png").await;
    browser
        .js(
            "document.getElementById('mtas').scrollIntoView(); return true;",
            vec![],
        )
        .await;
    browser.screenshot("cluster-a1b2c3d4-narrow-mtas.png").await;
    stop(setup, browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_signs_out_and_in_again_with_the_form() {
    fleet::in_own_namespace!();
    let (setup, browser, base) = signed_in(8, ACME).await;
    browser.click("form[action='/logout'] button").await;
    browser
        .wait_until(
            Duration::from_secs(5),
            "the sign-in form",
            "return !!document.getElementById('token');",
        )
        .await;
    browser.type_into("#token", GLOBEX).await;
    browser
        .click("form[action='/login'] button[type=submit]")
        .await;
    browser
        .wait_until(
            Duration::from_secs(5),
            "signed in as globex",
            "return !!document.getElementById('viewer') && document.getElementById('viewer').textContent === 'globex';",
        )
        .await;
    assert_eq!(sidebar(&browser).await, ["e5f6a7b8"]);
    assert_eq!(
        browser.text("#rate-limit").await.as_deref(),
        Some("1000/day per MTA")
    );
    let text = browser.body_text().await;
    assert!(
        !text.contains("a1b2c3d4") && !text.contains("mta-1"),
        "{text}"
    );
    assert_same_origin(&browser, base.trim_end_matches('/')).await;
    stop(setup, browser).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_killed_mta_down_within_5s_without_a_reload() {
    fleet::in_own_namespace!();
    let (mut setup, browser, _) = signed_in(2, ACME).await;
    wait_row(&browser, "mta-2", "up", Duration::from_secs(15)).await;
    wait_live(&browser).await;
    // A mark on this very document: a reload would wipe it.
    browser
        .js("window.__samePage = 'yes'; return true;", vec![])
        .await;

    setup.fake("mta-2").kill();
    let killed = Instant::now();
    wait_row(&browser, "mta-2", "down", Duration::from_secs(5)).await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(5), "shown down after {took:?}");
    assert_eq!(
        browser
            .js("return window.__samePage || null;", vec![])
            .await,
        json!("yes"),
        "the page reloaded"
    );
    let reason = browser
        .text("#mta-rows tr[data-mta='mta-2'] td.reason")
        .await
        .unwrap();
    assert!(
        reason.starts_with("smtp:") || reason.starts_with("https:"),
        "{reason}"
    );
    assert_eq!(
        browser
            .text("#mta-rows tr[data-mta='mta-1'] .state")
            .await
            .as_deref(),
        Some("up")
    );
    browser
        .wait_until(
            Duration::from_secs(2),
            "the transition listed and announced",
            "return !!document.querySelector('#transitions li[data-mta=\"mta-2\"][data-to=\"down\"]') && \
             document.getElementById('announcer').textContent.indexOf('mta-2 is now down') === 0;",
        )
        .await;
    assert_eq!(
        browser.text("#mta-summary").await.as_deref(),
        Some("1 of 2 MTAs up, 1 down")
    );
    assert_eq!(
        browser.text("[data-count='a1b2c3d4']").await.as_deref(),
        Some("1/2 up")
    );
    // The feed agrees with the page.
    let feed = setup.healthd.mta("mta-2").await.unwrap();
    assert_eq!(feed.state, MtaState::Down);
    browser.screenshot("mta-down.png").await;

    // Back again, still on the same page.
    setup.fake("mta-2").resume().await;
    wait_row(&browser, "mta-2", "up", Duration::from_secs(10)).await;
    assert_eq!(
        browser
            .js("return window.__samePage || null;", vec![])
            .await,
        json!("yes")
    );

    stop(setup, browser).await;
}

/// Plain HTTP to the dashboard, no browser: a client that keeps no cookies
/// and follows no redirects.
struct Plain {
    base: String,
    client: reqwest::Client,
}

impl Plain {
    fn new(setup: &Setup) -> Plain {
        Plain {
            base: setup.healthd.url.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        body: String,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap()
    }

    /// Signs in with `/?token=`; the `name=value` of the cookie set.
    async fn sign_in(&self, token: &str) -> String {
        let signed = self.get(&format!("/?token={token}"), None).await;
        assert_eq!(signed.status(), 303);
        cookie_of(&signed)
    }
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_string()
}

/// Without a valid token: the form, an answer, and never cluster data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_without_a_valid_token_shows_the_form_and_never_data() {
    let setup = Setup::start(3, false).await;
    let plain = Plain::new(&setup);
    let page = plain.get("/", None).await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let body = page.text().await.unwrap();
    assert!(
        body.contains("action=\"/login\"") && !body.contains("unmta.net"),
        "{body}"
    );
    let body = plain
        .get("/clusters/a1b2c3d4", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("action=\"/login\"") && !body.contains("mta-1"),
        "{body}"
    );
    assert_eq!(
        plain
            .get("/dashboard/clusters/a1b2c3d4/live", None)
            .await
            .status(),
        401
    );
    let wrong = plain.get("/?token=wrong", None).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let body = wrong.text().await.unwrap();
    assert!(
        body.contains("not valid") && !body.contains("unmta.net"),
        "{body}"
    );
    let forged = plain.get("/", Some("healthd_session=776f6e67")).await;
    assert_eq!(forged.status(), 401);
    assert!(!forged.text().await.unwrap().contains("unmta.net"));
    setup.healthd.stop().await;
}

/// Signing in sets an HttpOnly, SameSite=Strict cookie holding an opaque
/// session id; it opens the account's clusters only (the admin's, all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_session_cookie_opens_only_the_accounts_clusters() {
    let setup = Setup::start(10, false).await;
    let plain = Plain::new(&setup);
    let signed = plain.get(&format!("/?token={ACME}"), None).await;
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], "/");
    let set_cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(!set_cookie.contains(ACME), "{set_cookie}");
    let cookie = cookie_of(&signed);
    let id = cookie.trim_start_matches("healthd_session=");
    assert_eq!(id.len(), 64, "{cookie}");
    assert!(!cookie.contains(&hex::encode(ACME)), "{cookie}");

    let body = plain.get("/", Some(&cookie)).await.text().await.unwrap();
    assert!(
        body.contains("c-a1b2c3d4.unmta.net") && !body.contains("e5f6a7b8"),
        "{body}"
    );
    let foreign = plain.get("/clusters/e5f6a7b8", Some(&cookie)).await;
    assert_eq!(foreign.status(), 404);
    assert!(!foreign.text().await.unwrap().contains("c-e5f6a7b8"));
    let status = plain
        .get("/dashboard/clusters/e5f6a7b8/live", Some(&cookie))
        .await
        .status();
    assert_eq!(status, 404);
    let live: Value = plain
        .get("/dashboard/clusters/a1b2c3d4/live", Some(&cookie))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(live["data"]["id"], "a1b2c3d4");
    assert_eq!(live["data"]["rate_limit"], "500/hr per MTA");

    // The admin token sees every cluster; the form works as the query does.
    let admin = plain
        .post("/login", None, None, format!("token={ADMIN_TOKEN}"))
        .await;
    assert_eq!(admin.status(), 303);
    let body = plain
        .get("/", Some(&cookie_of(&admin)))
        .await
        .text()
        .await
        .unwrap();
    for id in ["a1b2c3d4", "c9d0e1f2", "e5f6a7b8"] {
        assert!(
            body.contains(&format!("data-cluster=\"{id}\"")),
            "{id} missing for admin"
        );
    }
    setup.healthd.stop().await;
}

/// Signing out clears the cookie and ends the session server-side; another
/// site's page can sign nobody in or out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sign_out_ends_the_session_and_other_sites_cannot_sign_in() {
    let setup = Setup::start(11, false).await;
    let plain = Plain::new(&setup);
    for path in ["/login", "/logout"] {
        let refused = plain
            .post(
                path,
                None,
                Some("http://evil.example"),
                format!("token={ACME}"),
            )
            .await;
        assert_eq!(refused.status(), 403, "{path}");
        assert!(refused.headers().get("set-cookie").is_none(), "{path}");
    }
    let out = plain.post("/logout", None, None, String::new()).await;
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));

    let cookie = plain.sign_in(ACME).await;
    assert_eq!(plain.get("/", Some(&cookie)).await.status(), 200);
    let out = plain
        .post("/logout", Some(&cookie), None, String::new())
        .await;
    assert_eq!(out.status(), 303);
    let after = plain.get("/", Some(&cookie)).await;
    assert_eq!(after.status(), 401);
    assert!(!after.text().await.unwrap().contains("unmta.net"));
    setup.healthd.stop().await;
}

/// The live update's transitions for cluster a1b2c3d4, as acme sees them.
async fn transitions_html(healthd: &Healthd) -> String {
    let (status, live) = healthd
        .get("/dashboard/clusters/a1b2c3d4/live", Some(ACME))
        .await;
    assert_eq!(status, 200, "{live}");
    live["transitions_html"].as_str().unwrap().to_string()
}

/// Recent state changes are kept in `transitions.json` beside the state
/// file and shown again by a restarted healthd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_transitions_survive_a_healthd_restart() {
    fleet::in_own_namespace!();
    let mut setup = Setup::start(9, true).await;
    setup
        .healthd
        .wait_state("mta-2", MtaState::Up, Duration::from_secs(15))
        .await;
    setup.fake("mta-2").kill();
    setup
        .healthd
        .wait_state("mta-2", MtaState::Down, Duration::from_secs(10))
        .await;
    // mta-2 went up -> down: only the first healthd saw that (after a
    // restart it goes unknown -> down).
    let went_down = "data-mta=\"mta-2\" data-from=\"up\" data-to=\"down\"";
    let file = setup.dir.path().join("var/transitions.json");
    eventually(Duration::from_secs(10), "the transition saved", || async {
        std::fs::read_to_string(&file).is_ok_and(|text| text.contains("\"from\": \"up\""))
    })
    .await
    .unwrap();
    assert!(transitions_html(&setup.healthd).await.contains(went_down));

    let Setup {
        dir,
        config,
        healthd,
        fakes,
    } = setup;
    healthd.stop().await;
    let healthd = Healthd::start(&config).await;
    let shown = transitions_html(&healthd).await;
    assert!(shown.contains(went_down), "{shown}");
    assert!(
        shown.contains("data-mta=\"mta-1\" data-from=\"unknown\" data-to=\"up\""),
        "{shown}"
    );
    healthd.stop().await;
    drop((dir, fakes));
}
