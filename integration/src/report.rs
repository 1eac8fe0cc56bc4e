//! What local-cluster prints once the cluster is up: the Connection
//! Details and commands that work when pasted into another terminal.

use std::fmt::Write;

use crate::info::ClusterInfo;

/// Single-quotes `text` for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@=,+".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// `dig` asking lb-dns for the cluster hostname.
pub fn dig_command(info: &ClusterInfo) -> String {
    format!(
        "dig @{} -p {} {} A +short",
        info.dns.address, info.dns.port, info.cluster.hostname
    )
}

/// A shell expression for the first address lb-dns answers now.
fn first_address(info: &ClusterInfo) -> String {
    format!("$({} | head -n1)", dig_command(info))
}

pub fn swaks_command(info: &ClusterInfo) -> String {
    format!(
        "swaks --server \"{addr}\" --port {port} -tls --tls-verify --tls-ca-path {ca} \
         --tls-sni {host} --auth PLAIN --auth-user {user} --auth-password {password} \
         --from hello@{domain} --to someone@example.com --header 'Subject: hello from swaks'",
        addr = first_address(info),
        port = info.cluster.smtp_ports.first().copied().unwrap_or(587),
        ca = shell_quote(&info.ca_file.display().to_string()),
        host = info.cluster.hostname,
        user = shell_quote(&info.credential.username),
        password = shell_quote(&info.credential.password),
        domain = info.sender_domain,
    )
}

pub fn injection_body(info: &ClusterInfo) -> String {
    serde_json::json!({
        "envelope_sender": format!("hello@{}", info.sender_domain),
        "recipients": ["someone@example.com"],
        "content": {
            "from": {"email": format!("hello@{}", info.sender_domain), "name": "Local cluster"},
            "subject": "hello from curl",
            "text_body": "It works.",
        }
    })
    .to_string()
}

pub fn curl_command(info: &ClusterInfo) -> String {
    format!(
        "curl --cacert {ca} --resolve {host}:{port}:\"{addr}\" -u {credential} \
         -H 'Content-Type: application/json' -d {body} {endpoint}",
        ca = shell_quote(&info.ca_file.display().to_string()),
        host = info.cluster.hostname,
        port = info.cluster.https_port,
        addr = first_address(info),
        credential = shell_quote(&format!(
            "{}:{}",
            info.credential.username, info.credential.password
        )),
        body = shell_quote(&injection_body(info)),
        endpoint = info.cluster.http_endpoint,
    )
}

pub fn details(info: &ClusterInfo) -> String {
    let mut out = String::new();
    let c = &info.cluster;
    let state = shell_quote(&info.state_dir.display().to_string());
    let ports: Vec<String> = c.smtp_ports.iter().map(u16::to_string).collect();
    let _ = writeln!(out, "\nConnection Details");
    let _ = writeln!(out, "  HTTP endpoint  {}", c.http_endpoint);
    let _ = writeln!(out, "  SMTP host      {}", c.smtp_host);
    let _ = writeln!(
        out,
        "  SMTP ports     {} (STARTTLS and AUTH required on all)",
        ports.join(", ")
    );
    let _ = writeln!(out, "  Username       {}", info.credential.username);
    let _ = writeln!(out, "  Password       {}", info.credential.password);
    let _ = writeln!(out, "  Rate limit     {} per MTA", c.rate_limit);
    let _ = writeln!(
        out,
        "  Sender domain  {} (mail to {} lands in the sink)",
        info.sender_domain,
        info.sink_domains.join(" or ")
    );
    let _ = writeln!(out, "\nThe fleet");
    let _ = writeln!(
        out,
        "  DNS (lb-dns)   {}:{}, the only place {} resolves",
        info.dns.address, info.dns.port, c.hostname
    );
    for p in &info.processes {
        let _ = writeln!(
            out,
            "  {:<14} {:<12} pid {:<8} {}",
            p.name,
            p.address,
            p.pid,
            p.admin_url.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "  CA             {}", info.ca_file.display());
    let _ = writeln!(out, "  Fleet file     {}", info.fleet_file.display());
    let _ = writeln!(out, "  Sink maildir   {}", info.sink.maildir.display());
    if let Some(vault) = &info.vault {
        let _ = writeln!(
            out,
            "  Secrets        OpenBao dev server {} (root token in {})",
            vault.address,
            vault.token_file.display()
        );
        let _ = writeln!(
            out,
            "                 BAO_ADDR={} BAO_TOKEN=$(cat {}) bao kv list {}/{}",
            vault.address,
            shell_quote(&vault.token_file.display().to_string()),
            vault.mount,
            vault.prefix
        );
    }
    let _ = writeln!(
        out,
        "  Everything     {}/cluster.json (logs in logs/)",
        info.state_dir.display()
    );
    let _ = writeln!(out, "\nTry it from another terminal");
    let _ = writeln!(out, "  {}", dig_command(info));
    let _ = writeln!(out, "  {}", swaks_command(info));
    let _ = writeln!(out, "  {}", curl_command(info));
    let _ = writeln!(
        out,
        "  ls {}",
        shell_quote(&info.sink.maildir.display().to_string())
    );
    let _ = writeln!(out, "\nOperate it");
    let _ = writeln!(
        out,
        "  add an MTA      local-cluster --add-mta --state-dir {state}"
    );
    let _ = writeln!(
        out,
        "  drain / rate    edit {}, then: local-cluster reload --state-dir {state}",
        shell_quote(&info.fleet_file.display().to_string())
    );
    let _ = writeln!(
        out,
        "  kill an MTA     kill -9 <pid>; bring it back: local-cluster restart mta-1 --state-dir {state}"
    );
    let _ = writeln!(
        out,
        "  dashboard       {}/?token={}",
        info.healthd.url, info.healthd.api_token
    );
    let _ = writeln!(
        out,
        "  health          curl -s -H 'Authorization: Bearer {}' {}/v1/fleet",
        info.healthd.admin_token, info.healthd.url
    );
    let _ = writeln!(
        out,
        "  Clusters API    curl -s -H 'Authorization: Bearer {}' {}/api/v1/clusters",
        info.healthd.api_token, info.healthd.url
    );
    let _ = writeln!(
        out,
        "  restart as is   local-cluster --state-dir {state}   (same CA, credential, queued mail)"
    );
    let _ = writeln!(out, "\nCtrl-C stops every process.");
    out
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("/tmp/x/ca.pem"), "/tmp/x/ca.pem");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
