fn main() -> std::process::ExitCode {
    fleet::daemon::main::<lb_dns::LbDns>()
}
