#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    touchpoint_local::main_entry()
}
