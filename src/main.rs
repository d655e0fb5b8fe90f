use std::process::ExitCode;

fn main() -> ExitCode {
    access_bot::cli::main()
}
