//! The ops CLI: `fleet check FILE`, `fleet hash-password`,
//! `fleet vault-import`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fleet",
    about = "Check the fleet file and make credential hashes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a fleet file: a summary and exit 0, or every problem and exit 1.
    Check { file: PathBuf },
    /// Read a password on stdin and print its argon2id PHC hash.
    HashPassword,
    /// Copy the fleet's file-based secrets (credential hashes, DKIM keys)
    /// into Vault (KV v2) and print the reference to write for each.
    VaultImport(Box<VaultImport>),
}

#[derive(clap::Args)]
struct VaultImport {
    /// The fleet file: its credential hashes written in place are copied.
    #[arg(long, value_name = "FILE")]
    fleet: PathBuf,
    /// An MTA config: its DKIM key files and TLS key file are copied
    /// (repeatable).
    #[arg(long = "mta-config", value_name = "FILE")]
    mta_configs: Vec<PathBuf>,
    /// A healthd config: its admin and followers' token hashes (repeatable).
    #[arg(long = "healthd-config", value_name = "FILE")]
    healthd_configs: Vec<PathBuf>,
    /// An lb-dns config: its `healthd_token` (repeatable).
    #[arg(long = "lb-dns-config", value_name = "FILE")]
    lb_dns_configs: Vec<PathBuf>,
    /// Also write the references into the files, in place of the values
    /// (the files and values themselves are left to you to delete).
    #[arg(long)]
    write: bool,
    /// Vault's address, e.g. https://vault.internal:8200.
    #[arg(long)]
    address: String,
    /// A file holding a token that may write under the prefix.
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// PEM CA of Vault's certificate.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    #[arg(long)]
    namespace: Option<String>,
    /// The KV version 2 mount.
    #[arg(long, default_value = "secret")]
    mount: String,
    /// Path under the mount the secrets go to.
    #[arg(long, default_value = "unmta")]
    prefix: String,
}

fn vault_import(args: VaultImport) -> Result<(), String> {
    let sources = fleet::vault::import::Sources {
        fleet_file: args.fleet,
        mta_configs: args.mta_configs,
        healthd_configs: args.healthd_configs,
        lb_dns_configs: args.lb_dns_configs,
    };
    let writes = fleet::vault::import::plan_sources(&sources, &args.mount, &args.prefix)?;
    if writes.is_empty() {
        println!("nothing to import: every secret is already a Vault reference");
        return Ok(());
    }
    let mut config = fleet::vault::VaultConfig::with_token_file(args.address, args.token_file);
    config.ca_file = args.ca_file;
    config.namespace = args.namespace;
    let client = fleet::vault::VaultClient::new(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let assignments = runtime
        .block_on(fleet::vault::import::import(&client, &writes))
        .map_err(|e| e.to_string())?;
    if args.write {
        fleet::vault::import::apply(&assignments)?;
        println!("# copied into Vault; these references now stand in the files:");
    } else {
        println!("# copied into Vault; write these references in place of the files and values:");
    }
    for assignment in assignments {
        println!(
            "{}: {} = \"{}\"",
            assignment.file.display(),
            assignment.key,
            assignment.reference
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { file } => match fleet::load_fleet(&file) {
            Ok(fleet) => {
                let credentials: usize = fleet.clusters.iter().map(|c| c.credentials.len()).sum();
                println!(
                    "{}: ok: zone {}, {} clusters, {} MTAs, {} credentials, {} accounts",
                    file.display(),
                    fleet.zone.origin,
                    fleet.clusters.len(),
                    fleet.mta_count(),
                    credentials,
                    fleet.accounts.len()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::FAILURE
            }
        },
        Command::VaultImport(args) => match vault_import(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("fleet vault-import: {error}");
                ExitCode::FAILURE
            }
        },
        Command::HashPassword => {
            let mut input = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("fleet: cannot read the password from stdin: {e}");
                return ExitCode::FAILURE;
            }
            let password = input.strip_suffix('\n').unwrap_or(&input);
            let password = password.strip_suffix('\r').unwrap_or(password);
            if password.is_empty() {
                eprintln!("fleet: the password on stdin is empty");
                return ExitCode::FAILURE;
            }
            match fleet::password::hash_password(password) {
                Ok(phc) => {
                    println!("{phc}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleet: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
