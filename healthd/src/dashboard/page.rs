//! The dashboard's HTML, rendered with maud (which escapes every value).

use fleet::clusters_api::{ClusterView, Connection};
use fleet::feed::MtaState;
use maud::{html, Markup, DOCTYPE};

use super::journal::Entry;

/// A sidebar entry.
pub struct Nav {
    pub id: String,
    pub hostname: String,
    pub up: usize,
    pub total: usize,
}

impl Nav {
    pub fn count(&self) -> String {
        format!("{}/{} up", self.up, self.total)
    }
}

/// The cluster on the page, with what its examples need.
pub struct Selected {
    pub view: ClusterView,
    pub domain: String,
    pub username: String,
    pub reach: Reach,
}

/// How the viewer's machine reaches the cluster (healthd's `[dashboard]`).
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// The DNS server that answers the cluster hostname (lb-dns).
    pub dns: Option<std::net::SocketAddr>,
    /// The CA to verify the certificate against.
    pub ca_file: Option<String>,
}

impl Reach {
    /// A shell expression for the first address `dns` answers now.
    fn first_address(&self, host: &str) -> Option<String> {
        self.dns.map(|dns| {
            format!(
                "\"$(dig @{} -p {} {host} A +short | head -n1)\"",
                dns.ip(),
                dns.port()
            )
        })
    }
}

/// `text` as one word for a POSIX shell (single-quoted unless plain).
fn word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@=,+".contains(c);
    match text.chars().all(plain) && !text.is_empty() {
        true => text.to_string(),
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

/// A state as people read it.
fn label(state: MtaState) -> &'static str {
    match state {
        MtaState::Drain => "draining",
        other => other.as_str(),
    }
}

/// `2026-11-21T22:50:01.123Z` as `2026-11-21 22:50:01 UTC`.
fn when(rfc3339: &str) -> String {
    match rfc3339.get(..19) {
        Some(head) => format!("{} UTC", head.replacen('T', " ", 1)),
        None => rfc3339.to_string(),
    }
}

/// The time of day shown (`22:50:01 UTC`); the whole date is its title.
fn time_of_day(rfc3339: &str) -> String {
    match rfc3339.get(11..19) {
        Some(clock) => format!("{clock} UTC"),
        None => rfc3339.to_string(),
    }
}

fn time(rfc3339: &Option<String>) -> Markup {
    match rfc3339 {
        Some(at) => html! {
            time datetime=(at) title=(when(at)) { (time_of_day(at)) }
            " " span.ago data-since=(at) {}
        },
        None => html! { span.none { "—" } },
    }
}

fn state_badge(state: MtaState) -> Markup {
    html! {
        span class={ "state state-" (state.as_str()) } data-state=(state.as_str()) { (label(state)) }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · unMTA" }
            link rel="icon" type="image/svg+xml" href="/dashboard/assets/favicon.svg";
            link rel="stylesheet" href="/dashboard/assets/dashboard.css";
            script src="/dashboard/assets/dashboard.js" defer {}
        }
    }
}

fn brand() -> Markup {
    html! {
        a.brand href="/" {
            span.logo aria-hidden="true" { "u" }
            span { "unMTA" }
            span.product { "Clusters" }
        }
    }
}

/// The sign-in form: the only thing an unauthenticated visitor sees.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body.login-body {
                main #main.login {
                    (brand())
                    h1 { "Sign in" }
                    p.muted { "Use the API token of your account, as for the Clusters API." }
                    @if let Some(error) = error {
                        p.error #login-error role="alert" { (error) }
                    }
                    form method="post" action="/login" {
                        label for="token" { "API token" }
                        input #token type="password" name="token" required autocomplete="current-password"
                            autofocus aria-describedby=[error.map(|_| "login-error")];
                        button.primary type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

fn layout(title: &str, viewer: &str, nav: &[Nav], current: Option<&str>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.topbar {
                    (brand())
                    div.account {
                        span.who { "Signed in as " strong #viewer { (viewer) } }
                        form method="post" action="/logout" {
                            button.quiet type="submit" { "Sign out" }
                        }
                    }
                }
                div.shell {
                    nav.sidebar aria-labelledby="clusters-heading" {
                        h2 #clusters-heading { "Clusters" }
                        @if nav.is_empty() {
                            p.muted { "No clusters." }
                        }
                        ul #cluster-list {
                            @for n in nav {
                                @let here = current == Some(n.id.as_str());
                                li {
                                    a href={ "/clusters/" (n.id) } data-cluster=(n.id)
                                        aria-current=[here.then_some("page")] {
                                        span.cluster-id { (n.id) }
                                        span.cluster-host { (n.hostname) }
                                        span class=(if n.total > 0 && n.up == n.total { "count all-up" } else { "count" })
                                            data-count=(n.id) { (n.count()) }
                                    }
                                }
                            }
                        }
                    }
                    (main)
                }
                div #announcer.visually-hidden aria-live="polite" aria-atomic="true" {}
            }
        }
    }
}

pub fn summary(view: &ClusterView) -> String {
    let up = view.mtas.iter().filter(|m| m.state == MtaState::Up).count();
    let total = view.mtas.len();
    let mut words = format!(
        "{up} of {total} MTA{} up",
        if total == 1 { "" } else { "s" }
    );
    for state in [MtaState::Down, MtaState::Drain, MtaState::Unknown] {
        let n = view.mtas.iter().filter(|m| m.state == state).count();
        if n > 0 {
            words.push_str(&format!(", {n} {}", label(state)));
        }
    }
    words
}

/// The rows of the MTA table (also sent to the page on every change).
pub fn mta_rows(view: &ClusterView) -> Markup {
    html! {
        @for mta in &view.mtas {
            tr data-mta=(mta.name) data-state=(mta.state.as_str()) {
                th scope="row" { (mta.name) }
                td.state-cell { (state_badge(mta.state)) }
                td.since { (time(&mta.since)) }
                td.num {
                    @match mta.latency_ms {
                        Some(ms) => { (format!("{ms:.1} ms")) },
                        None => span.none { "—" },
                    }
                }
                td.reason {
                    @match &mta.reason {
                        Some(reason) => { (reason) },
                        None => span.none { "—" },
                    }
                }
            }
        }
        @if view.mtas.is_empty() {
            tr { td.muted colspan="5" { "This cluster has no MTAs." } }
        }
    }
}

/// The recent transitions list (also sent on every change).
pub fn transitions(entries: &[Entry]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.muted { "No state changes yet." }
        } @else {
            ol.transitions {
                @for e in entries {
                    li data-mta=(e.mta) data-from=(e.from.as_str()) data-to=(e.to.as_str()) {
                        span.t-time { (time(&Some(e.at.clone()))) }
                        span.t-what {
                            strong { (e.mta) } " "
                            (state_badge(e.from))
                            span aria-hidden="true" { " → " }
                            span.visually-hidden { " to " }
                            (state_badge(e.to))
                        }
                        @if let Some(reason) = &e.reason {
                            span.t-reason { (reason) }
                        }
                    }
                }
            }
        }
    }
}

/// A URL that wraps, when it must, before its path rather than anywhere.
fn breakable_url(url: &str) -> Markup {
    let path_at = url
        .find("://")
        .and_then(|scheme| url[scheme + 3..].find('/').map(|p| scheme + 3 + p));
    match path_at {
        Some(at) => html! { (url[..at]) wbr; (url[at..]) },
        None => html! { (url) },
    }
}

fn copy_button(target: &str, what: &str) -> Markup {
    html! {
        button.copy type="button" data-copy-target=(target) aria-label={ "Copy " (what) } {
            "Copy"
        }
    }
}

/// The port to put in examples: the fleet's first (recommended) port.
fn example_port(connection: &Connection) -> u16 {
    connection.smtp_ports.first().map_or(587, |p| p.port)
}

/// The swaks example: through `reach`'s DNS and CA when it names them, so
/// it works when pasted (as local-cluster's printed command).
pub fn swaks(selected: &Selected) -> String {
    let c = &selected.view.connection;
    let host = &c.smtp_host;
    let reach = &selected.reach;
    let server = reach.first_address(host).unwrap_or_else(|| host.clone());
    let mut tls = "--tls".to_string();
    if let Some(ca) = &reach.ca_file {
        tls.push_str(&format!(" --tls-verify --tls-ca-path {}", word(ca)));
    }
    if reach.dns.is_some() {
        tls.push_str(&format!(" --tls-sni {host}"));
    }
    format!(
        "swaks --server {server} --port {port} \\\n  {tls} \\\n  \
         --auth PLAIN --auth-user {user} --auth-password your-password \\\n  \
         --from sender@{domain} --to recipient@example.com \\\n  \
         --header \"Subject: Test from swaks\" --body \"Hello from unMTA\"",
        port = example_port(c),
        user = word(&selected.username),
        domain = selected.domain,
    )
}

/// The curl example, resolving and verifying as [`swaks`] does.
pub fn curl(selected: &Selected) -> String {
    let c = &selected.view.connection;
    let reach = &selected.reach;
    let mut options = String::new();
    if let Some(ca) = &reach.ca_file {
        options.push_str(&format!("--cacert {} \\\n  ", word(ca)));
    }
    if let Some(address) = reach.first_address(&c.smtp_host) {
        options.push_str(&format!(
            "--resolve {}:{}:{address} \\\n  ",
            c.smtp_host, c.https_port
        ));
    }
    format!(
        "curl {options}-X POST {endpoint} \\\n  -u {credential} \\\n  \
         -H \"Content-Type: application/json\" \\\n  \
         -d '{{\n    \"envelope_sender\": \"bounces@{domain}\",\n    \"recipients\": [\"recipient@example.com\"],\n    \
         \"content\": {{\n      \"from\": \"sender@{domain}\",\n      \"subject\": \"Test from curl\",\n      \
         \"text_body\": \"Hello from unMTA\"\n    }}\n  }}'",
        endpoint = c.http_endpoint,
        credential = word(&format!("{}:your-password", selected.username)),
        domain = selected.domain,
    )
}

fn rate_card(view: &ClusterView) -> Markup {
    let unlimited = view.rate_limit.eq_ignore_ascii_case("unlimited");
    html! {
        section.card aria-labelledby="rate-heading" {
            h2 #rate-heading { "Rate limit" }
            @if unlimited {
                p.rate #rate-limit data-limited="false" { "Unlimited" }
                p.muted { "No message rate limit is set for this cluster." }
            } @else {
                p.rate #rate-limit data-limited="true" { (view.rate_limit) }
                p.muted {
                    "Each MTA of the cluster sends at most this many messages in the window. "
                    "Messages over the limit are never rejected: they wait in the queue and go out "
                    "when the window allows."
                }
            }
            p.readonly { "Read-only: set by the administrators." }
        }
    }
}

fn connection_card(view: &ClusterView) -> Markup {
    let c = &view.connection;
    html! {
        section.card.connection #connection-details aria-labelledby="connection-heading" {
            h2 #connection-heading { "Connection Details" }
            dl.fields {
                div.field {
                    dt { span { "HTTP" } (copy_button("http-endpoint", "HTTP endpoint")) }
                    dd { code #http-endpoint { (breakable_url(&c.http_endpoint)) } }
                }
                div.field {
                    dt { span { "SMTP Host" } (copy_button("smtp-host", "SMTP host")) }
                    dd { code #smtp-host { (c.smtp_host) } }
                }
            }
            h3 #ports-heading { "SMTP Ports" }
            table.ports #smtp-ports aria-labelledby="ports-heading" {
                thead {
                    tr {
                        th scope="col" { "Port" }
                        th scope="col" { "Use case" }
                        th scope="col" { span.visually-hidden { "Copy" } }
                    }
                }
                tbody {
                    @for p in &c.smtp_ports {
                        @let id = format!("smtp-port-{}", p.port);
                        tr data-port=(p.port) {
                            th scope="row" { code id=(id) { (p.port) } }
                            td {
                                span.use-case { (p.use_case) }
                                @if p.starttls_required {
                                    span.tls { "STARTTLS required" }
                                }
                            }
                            td.copy-cell { (copy_button(&id, &format!("SMTP port {}", p.port))) }
                        }
                    }
                }
            }
        }
    }
}

/// The Cluster page for `selected`.
pub fn cluster_page(
    viewer: &str,
    nav: &[Nav],
    selected: &Selected,
    entries: &[Entry],
    generation: u64,
) -> Markup {
    let view = &selected.view;
    let main = html! {
        main #main.cluster data-cluster=(view.id) data-generation=(generation) tabindex="-1" {
            div.page-head {
                div {
                    p.eyebrow { "Cluster" }
                    h1 #cluster-title { (view.id) }
                    p.hostname { (view.hostname) }
                }
                p.live #live-status data-live="connecting" { span.pulse aria-hidden="true" {} span.live-text { "Connecting…" } }
            }
            div.grid {
                div.side {
                    (connection_card(view))
                    (rate_card(view))
                }
                div.primary {
                    section.card aria-labelledby="mtas-heading" {
                        div.card-head {
                            h2 #mtas-heading { "MTAs" }
                            p.summary #mta-summary { (summary(view)) }
                        }
                        div.table-wrap {
                            table.mtas #mtas aria-labelledby="mtas-heading" {
                                thead {
                                    tr {
                                        th scope="col" { "MTA" }
                                        th scope="col" { "State" }
                                        th scope="col" { "Since" }
                                        th.num scope="col" { "Latency" }
                                        th scope="col" { "Last failure" }
                                    }
                                }
                                tbody #mta-rows { (mta_rows(view)) }
                            }
                        }
                    }
                    section.card aria-labelledby="transitions-heading" {
                        h2 #transitions-heading { "Recent state changes" }
                        div #transitions { (transitions(entries)) }
                    }
                    section.card aria-labelledby="examples-heading" {
                        h2 #examples-heading { "Send a test message" }
                        p.muted {
                            "Ready to paste: replace " code { "your-password" } " with your credential's password."
                        }
                        div.example {
                            div.example-head {
                                h3 #swaks-heading { "SMTP (swaks)" }
                                (copy_button("swaks-example", "swaks command"))
                            }
                            pre tabindex="0" aria-labelledby="swaks-heading" { code #swaks-example { (swaks(selected)) } }
                        }
                        div.example {
                            div.example-head {
                                h3 #curl-heading { "HTTP (curl)" }
                                (copy_button("curl-example", "curl command"))
                            }
                            pre tabindex="0" aria-labelledby="curl-heading" { code #curl-example { (curl(selected)) } }
                        }
                    }
                }
            }
        }
    };
    layout(
        &format!("Cluster {}", view.id),
        viewer,
        nav,
        Some(&view.id),
        main,
    )
}

pub fn not_found(viewer: &str, nav: &[Nav]) -> Markup {
    layout(
        "Not found",
        viewer,
        nav,
        None,
        html! {
            main #main.empty {
                h1 { "Not found" }
                p { "None of your clusters has this id. Pick one from the list." }
            }
        },
    )
}

pub fn no_clusters(viewer: &str) -> Markup {
    layout(
        "No clusters",
        viewer,
        &[],
        None,
        html! {
            main #main.empty {
                h1 { "No clusters yet" }
                p { "This account has no clusters. Ask an administrator to add one." }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet::clusters_api::{MtaView, SmtpPort};

    fn state(word: &str) -> MtaState {
        serde_json::from_value(serde_json::Value::from(word)).unwrap()
    }

    fn view(states: &[&str]) -> ClusterView {
        ClusterView {
            id: "a1".into(),
            hostname: "c-a1.unmta.net".into(),
            connection: Connection {
                http_endpoint: "https://c-a1.unmta.net/api/inject/v1".into(),
                smtp_host: "c-a1.unmta.net".into(),
                smtp_ports: [25, 587]
                    .iter()
                    .map(|p| SmtpPort {
                        port: *p,
                        use_case: "x".into(),
                        starttls_required: true,
                    })
                    .collect(),
                https_port: 443,
            },
            rate_limit: "unlimited".into(),
            mtas: states
                .iter()
                .enumerate()
                .map(|(i, s)| MtaView {
                    name: format!("mta-<{i}>"),
                    state: state(s),
                    since: None,
                    latency_ms: None,
                    reason: Some("<b>x</b>".into()),
                    degraded: None,
                })
                .collect(),
        }
    }

    #[test]
    fn summary_counts_each_state_in_words() {
        assert_eq!(summary(&view(&["up"])), "1 of 1 MTA up");
        assert_eq!(
            summary(&view(&["up", "down", "drain", "unknown"])),
            "1 of 4 MTAs up, 1 down, 1 draining, 1 unknown"
        );
    }

    #[test]
    fn rows_escape_what_they_show() {
        let html = mta_rows(&view(&["drain"])).into_string();
        assert!(
            html.contains("mta-&lt;0&gt;") && html.contains("&lt;b&gt;x&lt;/b&gt;"),
            "{html}"
        );
        assert!(html.contains(">draining<"), "{html}");
    }

    #[test]
    fn examples_use_the_first_port_and_the_clusters_host() {
        let mut selected = Selected {
            view: view(&[]),
            domain: "a.example".into(),
            username: "cred".into(),
            reach: Reach::default(),
        };
        selected.view.connection.smtp_ports.reverse();
        let swaks_line = swaks(&selected);
        assert!(
            swaks_line.starts_with("swaks --server c-a1.unmta.net --port 587 \\\n  --tls \\"),
            "{swaks_line}"
        );
        assert!(curl(&selected).starts_with("curl -X POST https://c-a1.unmta.net/api/inject/v1 \\"));
        assert_eq!(
            breakable_url("https://c-a1.unmta.net/api/inject/v1").into_string(),
            "https://c-a1.unmta.net<wbr>/api/inject/v1"
        );
    }

    /// With `[dashboard]`'s DNS and CA the examples resolve through that
    /// server and verify against that CA, as local-cluster prints them.
    #[test]
    fn examples_resolve_through_the_dns_and_trust_the_ca_when_given() {
        let selected = Selected {
            view: view(&[]),
            domain: "a.example".into(),
            username: "cred".into(),
            reach: Reach {
                dns: Some("127.0.0.1:5300".parse().unwrap()),
                ca_file: Some("/tmp/state dir/ca.pem".into()),
            },
        };
        let dig = "\"$(dig @127.0.0.1 -p 5300 c-a1.unmta.net A +short | head -n1)\"";
        let swaks_line = swaks(&selected);
        assert!(
            swaks_line.starts_with(&format!("swaks --server {dig} --port 25 \\")),
            "{swaks_line}"
        );
        assert!(
            swaks_line.contains(
                "--tls --tls-verify --tls-ca-path '/tmp/state dir/ca.pem' --tls-sni c-a1.unmta.net"
            ),
            "{swaks_line}"
        );
        let curl_line = curl(&selected);
        assert!(
            curl_line.starts_with(&format!(
                "curl --cacert '/tmp/state dir/ca.pem' \\\n  --resolve c-a1.unmta.net:443:{dig} \\\n  -X POST https://"
            )),
            "{curl_line}"
        );
    }
}
