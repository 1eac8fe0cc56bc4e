fn main() -> std::process::ExitCode {
    // hickory-server logs every query at info; keep that out of the default.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "info,hickory_server=warn,hickory_net=warn");
    }
    fleet::daemon::main::<lb_dns::LbDns>()
}
