fn main() -> std::process::ExitCode {
    fleet::daemon::main::<healthd::Healthd>()
}
