//! The link to healthd's feed: this node's bearer token and, for
//! `https://` feeds, the only CA trusted to vouch for healthd. A feed whose
//! certificate does not chain to that CA or does not name the URL's host is
//! refused (and counts as unreachable).

use std::time::Duration;

use crate::config::NodeConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What every follower task of this node presents and trusts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeedLink {
    pub token: Option<String>,
    /// The PEM text of `healthd_ca_file`.
    pub ca_pem: Option<Vec<u8>>,
}

impl FeedLink {
    /// The link the node config describes; the error is a sentence naming
    /// the key.
    pub fn from_node(node: &NodeConfig) -> Result<FeedLink, String> {
        let ca_pem = match &node.healthd_ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("healthd_ca_file: cannot read {}: {e}", path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("healthd_ca_file: {} is not PEM: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "healthd_ca_file: {} holds no certificate",
                        path.display()
                    ));
                }
                Some(pem)
            }
        };
        for (i, url) in node.healthd.iter().enumerate() {
            let https = url.starts_with("https://");
            if !https && !url.starts_with("http://") {
                return Err(format!(
                    "healthd[{i}]: `{url}` must start with http:// or https://"
                ));
            }
            if https && ca_pem.is_none() {
                return Err(format!(
                    "healthd[{i}]: `{url}` is https: healthd_ca_file must name the CA its certificate is verified against"
                ));
            }
        }
        if node
            .healthd_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err("healthd_token: must not be empty (leave it out instead)".to_string());
        }
        Ok(FeedLink {
            token: node.healthd_token.clone(),
            ca_pem,
        })
    }

    /// An HTTP client trusting only the configured CA (no other roots).
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tls_built_in_root_certs(false);
        if let Some(pem) = &self.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the healthd feed client: {e}"))
    }

    /// `GET url` with this node's token.
    pub fn get(&self, client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        let request = client.get(url);
        match &self.token {
            Some(token) => request.bearer_auth(token.trim()),
            None => request,
        }
    }
}
