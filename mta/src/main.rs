fn main() -> std::process::ExitCode {
    fleet::daemon::main::<mta::MtaNode>()
}
