//! The ops CLI: `fleet check FILE`, `fleet hash-password`.

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
