//! A small W3C WebDriver client for the dashboard's browser tests: Debian's
//! `chromedriver` driving headless `chromium`, spoken to over HTTP with
//! reqwest. A missing browser is a failure with the command that installs it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const INSTALL: &str = "the dashboard's browser tests need Debian's chromium and chromium-driver: \
                       apt-get install -y chromium chromium-driver";

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Where the screenshots go: `target/dashboard-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| exe.ancestors().nth(3).expect("target dir").to_path_buf());
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends chromium (best effort: the driver going ends it too).
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = blocking_delete(&url);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// DELETE without an async runtime (for Drop): one raw HTTP/1.1 request.
fn blocking_delete(url: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    Ok(())
}

impl Browser {
    /// Starts chromedriver on a free port and a headless chromium session
    /// that can reach nothing but loopback addresses.
    pub async fn start() -> Browser {
        let driver_path =
            which(&["chromedriver"]).unwrap_or_else(|| panic!("chromedriver not found: {INSTALL}"));
        let chromium = which(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("chromium not found: {INSTALL}"));
        let mut driver = Command::new(&driver_path)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {INSTALL}", driver_path.display()));
        let stdout = driver.stdout.take().expect("chromedriver stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim().trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(e) => {
                let _ = driver.kill();
                panic!("chromedriver did not say its port within 30 s ({e})");
            }
        };
        let profile = tempfile::tempdir().expect("chromium profile folder");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--no-default-browser-check".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-extensions".to_string(),
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.*".to_string(),
            "--window-size=1280,1100".to_string(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": { "binary": chromium, "args": args },
                    "goog:loggingPrefs": { "performance": "ALL", "browser": "ALL" },
                }
            }
        });
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let answer = browser.raw("POST", "/session", Some(capabilities)).await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_string();
        browser
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: not JSON: {e}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status}: {}",
            answer["value"]
        );
        answer["value"].clone()
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.raw(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.execute("sync", script, args).await
    }

    /// [`Browser::js`] for a script that calls its last argument when done.
    pub async fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.execute("async", script, args).await
    }

    async fn execute(&self, how: &str, script: &str, args: Vec<Value>) -> Value {
        let body = json!({ "script": script, "args": args });
        self.cmd("POST", &format!("/execute/{how}"), Some(body))
            .await
    }

    /// The text of the first element matching `css`, or None.
    pub async fn text(&self, css: &str) -> Option<String> {
        self.js(
            "var e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
            vec![json!(css)],
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    pub async fn body_text(&self) -> String {
        self.text("body").await.unwrap_or_default()
    }

    /// A WebDriver element reference for `css`.
    pub async fn find(&self, css: &str) -> String {
        let found = self
            .cmd(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.cmd("POST", &format!("/element/{element}/click"), None)
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.cmd(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Presses and releases each key in turn (WebDriver actions: a real
    /// keyboard as far as the page can tell). `\u{E004}` is Tab,
    /// `\u{E007}` Enter.
    pub async fn keys(&self, keys: &[&str]) {
        let mut actions = Vec::new();
        for key in keys {
            actions.push(json!({ "type": "keyDown", "value": key }));
            actions.push(json!({ "type": "keyUp", "value": key }));
        }
        self.cmd(
            "POST",
            "/actions",
            Some(json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] })),
        )
        .await;
    }

    /// `id`, class and text of the focused element.
    pub async fn focused(&self) -> String {
        self.js(
            "var e = document.activeElement; \
             return e.tagName.toLowerCase() + '#' + (e.id || '') + '.' + (e.className || '') + ' ' + \
             (e.getAttribute('aria-label') || e.textContent.trim().slice(0, 40));",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub async fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    pub async fn delete_cookies(&self) {
        self.cmd("DELETE", "/cookie", None).await;
    }

    /// Grants a permission (W3C Permissions extension) for the page's origin.
    pub async fn grant(&self, name: &str) {
        self.cmd(
            "POST",
            "/permissions",
            Some(json!({ "descriptor": { "name": name }, "state": "granted" })),
        )
        .await;
    }

    /// Saves a PNG of the viewport to `target/dashboard-screenshots/<name>`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let png = self.cmd("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("screenshot base64"))
            .expect("screenshot PNG");
        let path = screenshot_dir().join(name);
        std::fs::write(&path, bytes).expect("write screenshot");
        path
    }

    /// Every URL the browser requested since the last call (chromedriver's
    /// performance log: the DevTools Network events).
    pub async fn requested_urls(&self) -> Vec<String> {
        let entries = self
            .cmd("POST", "/se/log", Some(json!({ "type": "performance" })))
            .await;
        let mut urls = Vec::new();
        for entry in entries.as_array().into_iter().flatten() {
            let Some(message) = entry["message"].as_str() else {
                continue;
            };
            let Ok(message) = serde_json::from_str::<Value>(message) else {
                continue;
            };
            let event = &message["message"];
            if event["method"] == "Network.requestWillBeSent" {
                if let Some(url) = event["params"]["request"]["url"].as_str() {
                    urls.push(url.to_string());
                }
            }
        }
        urls
    }

    /// The browser console's messages (errors in the page's script).
    pub async fn console(&self) -> Vec<String> {
        let entries = self
            .cmd("POST", "/se/log", Some(json!({ "type": "browser" })))
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{} {}", e["level"], e["message"]))
            .collect()
    }

    /// Polls `script` (returning true when done) every 50 ms, at most `bound`.
    pub async fn wait_until(&self, bound: Duration, what: &str, script: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self.js(script, vec![]).await == Value::Bool(true) {
                return start.elapsed();
            }
            if start.elapsed() > bound {
                let body = self.body_text().await;
                panic!("not {what} within {bound:?}; page text: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
