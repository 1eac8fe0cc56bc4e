//! Fleet files for tests, written line by line as an operator would but
//! without repeating the `[zone]` block and the table headers in every
//! test. The output is plain TOML text: a test that needs a malformed file
//! adds its bad lines with [`FleetToml::set`] or [`FleetToml::raw`].

use std::fmt::{self, Display, Write};

/// A fleet file under construction; `to_string()` gives its text.
#[derive(Clone, Debug)]
pub struct FleetToml {
    text: String,
}

impl FleetToml {
    /// The `unmta.net` zone with its one nameserver `ns1` at `ns_ipv4`.
    pub fn new(ns_ipv4: impl Display) -> FleetToml {
        FleetToml {
            text: format!(
                "[zone]\norigin = \"unmta.net\"\nprimary_ns = \"ns1.unmta.net\"\n\
                 hostmaster = \"hostmaster.unmta.net\"\n\
                 nameservers = [ {{ name = \"ns1.unmta.net\", ipv4 = \"{ns_ipv4}\" }} ]\n"
            ),
        }
    }

    /// The `[ports]` table: the SMTP ports in the fleet's order and HTTPS.
    pub fn ports(mut self, smtp: &[u16], https: u16) -> FleetToml {
        let smtp: Vec<String> = smtp.iter().map(u16::to_string).collect();
        let _ = write!(
            self.text,
            "\n[ports]\nsmtp = [{}]\nhttps = {https}\n",
            smtp.join(", ")
        );
        self
    }

    /// Opens a `[[clusters]]` table with its id and sending domains.
    pub fn cluster(mut self, id: &str, domains: &[&str]) -> FleetToml {
        let domains = list(domains);
        let _ = write!(
            self.text,
            "\n[[clusters]]\nid = \"{id}\"\ndomains = {domains}\n"
        );
        self
    }

    /// A credential of the cluster opened last (`password` is the hash).
    pub fn credential(mut self, username: &str, password: &str) -> FleetToml {
        let _ = write!(
            self.text,
            "\n  [[clusters.credentials]]\n  username = \"{username}\"\n  password = \"{password}\"\n"
        );
        self
    }

    /// An MTA of the cluster opened last.
    pub fn mta(mut self, name: &str, ipv4: impl Display) -> FleetToml {
        let _ = write!(
            self.text,
            "\n  [[clusters.mtas]]\n  name = \"{name}\"\n  ipv4 = \"{ipv4}\"\n"
        );
        self
    }

    /// An account owning `clusters`, known by its token's sha256.
    pub fn account(mut self, name: &str, token_sha256: &str, clusters: &[&str]) -> FleetToml {
        let clusters = list(clusters);
        let _ = write!(
            self.text,
            "\n[[accounts]]\nname = \"{name}\"\ntoken_sha256 = \"{token_sha256}\"\nclusters = {clusters}\n"
        );
        self
    }

    /// One more `key = value` line in the table opened last.
    pub fn set(mut self, line: &str) -> FleetToml {
        self.text.push_str(line);
        self.text.push('\n');
        self
    }

    /// Any further TOML, as written.
    pub fn raw(mut self, toml: &str) -> FleetToml {
        self.text.push_str(toml);
        self
    }
}

/// A TOML array of strings.
fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Display for FleetToml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::FleetToml;

    #[test]
    fn the_text_parses_as_the_fleet_it_describes() {
        let text = FleetToml::new("192.0.2.53")
            .ports(&[587, 25], 443)
            .cluster("a1b2c3d4", &["yourdomain.com"])
            .set("rate_limit = \"500/hr\"")
            .mta("mta-1", "203.0.113.11")
            .set("drain = true")
            .to_string();
        let fleet = crate::parse_fleet(&text, "test.toml").unwrap();
        assert_eq!(fleet.clusters[0].id, "a1b2c3d4");
        assert_eq!(fleet.clusters[0].mtas.len(), 1);
        assert!(fleet.clusters[0].mtas[0].drain, "{text}");
    }
}
