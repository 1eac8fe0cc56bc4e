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

/// What `local-cluster` prints once the cluster is up: the Connection
/// Details, the fleet, commands to try it and to operate it.
pub fn details(info: &ClusterInfo) -> String {
    let mut out = String::new();
    section(&mut out, "Connection Details", &connection_details(info));
    section(&mut out, "The fleet", &fleet(info));
    let _ = writeln!(out, "\nTry it from another terminal");
    for command in [dig_command(info), swaks_command(info), curl_command(info)] {
        let _ = writeln!(out, "  {command}");
    }
    let maildir = shell_quote(&info.sink.maildir.display().to_string());
    let _ = writeln!(out, "  ls {maildir}");
    let _ = writeln!(out, "\nOperate it");
    for (what, how) in operations(info) {
        let _ = writeln!(out, "  {what:<15} {how}");
    }
    let _ = writeln!(out, "\nCtrl-C stops every process.");
    out
}

/// A titled block of `label  value` lines, the values in one column.
fn section(out: &mut String, title: &str, lines: &[(String, String)]) {
    let _ = writeln!(out, "\n{title}");
    for (label, value) in lines {
        let _ = writeln!(out, "  {label:<14} {value}");
    }
}

fn connection_details(info: &ClusterInfo) -> Vec<(String, String)> {
    let c = &info.cluster;
    let ports: Vec<String> = c.smtp_ports.iter().map(u16::to_string).collect();
    let sinks = info.sink_domains.join(" or ");
    let lines = vec![
        ("HTTP endpoint", c.http_endpoint.clone()),
        ("SMTP host", c.smtp_host.clone()),
        (
            "SMTP ports",
            format!("{} (STARTTLS and AUTH required on all)", ports.join(", ")),
        ),
        ("Username", info.credential.username.clone()),
        ("Password", info.credential.password.clone()),
        ("Rate limit", format!("{} per MTA", c.rate_limit)),
        (
            "Sender domain",
            format!("{} (mail to {sinks} lands in the sink)", info.sender_domain),
        ),
    ];
    lines.into_iter().map(|(l, v)| (l.to_string(), v)).collect()
}

/// lb-dns, every process with its pid and admin URL, and the files.
fn fleet(info: &ClusterInfo) -> Vec<(String, String)> {
    let line = |label: &str, value: String| (label.to_string(), value);
    let (dns, hostname) = (&info.dns, &info.cluster.hostname);
    let mut lines = vec![line(
        "DNS (lb-dns)",
        format!(
            "{}:{}, the only place {hostname} resolves",
            dns.address, dns.port
        ),
    )];
    for p in &info.processes {
        let admin = p.admin_url.as_deref().unwrap_or("");
        lines.push(line(
            &p.name,
            format!("{:<12} pid {:<8} {admin}", p.address, p.pid),
        ));
    }
    lines.push(line("CA", info.ca_file.display().to_string()));
    lines.push(line("Fleet file", info.fleet_file.display().to_string()));
    lines.push(line(
        "Sink maildir",
        info.sink.maildir.display().to_string(),
    ));
    if let Some(vault) = &info.vault {
        let token_file = vault.token_file.display().to_string();
        let secrets = format!(
            "OpenBao dev server {} (root token in {token_file})",
            vault.address
        );
        lines.push(line("Secrets", secrets));
        let list = format!(
            "BAO_ADDR={} BAO_TOKEN=$(cat {}) bao kv list {}/{}",
            vault.address,
            shell_quote(&token_file),
            vault.mount,
            vault.prefix
        );
        lines.push(line("", list));
    }
    let everything = format!("{}/cluster.json (logs in logs/)", info.state_dir.display());
    lines.push(line("Everything", everything));
    lines
}

/// How to operate the running cluster, one command each.
fn operations(info: &ClusterInfo) -> Vec<(&'static str, String)> {
    let state = shell_quote(&info.state_dir.display().to_string());
    let fleet_file = shell_quote(&info.fleet_file.display().to_string());
    let healthd = &info.healthd;
    vec![
        (
            "add an MTA",
            format!("local-cluster --add-mta --state-dir {state}"),
        ),
        (
            "drain / rate",
            format!("edit {fleet_file}, then: local-cluster reload --state-dir {state}"),
        ),
        (
            "kill an MTA",
            format!(
                "kill -9 <pid>; bring it back: local-cluster restart mta-1 --state-dir {state}"
            ),
        ),
        (
            "dashboard",
            format!("{}/?token={}", healthd.url, healthd.api_token),
        ),
        (
            "health",
            format!(
                "curl -s -H 'Authorization: Bearer {}' {}/v1/fleet",
                healthd.admin_token, healthd.url
            ),
        ),
        (
            "Clusters API",
            format!(
                "curl -s -H 'Authorization: Bearer {}' {}/api/v1/clusters",
                healthd.api_token, healthd.url
            ),
        ),
        (
            "restart as is",
            format!("local-cluster --state-dir {state}   (same CA, credential, queued mail)"),
        ),
    ]
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
