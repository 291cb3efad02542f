//! The `nijigen` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The one parse of the command line; the settings are resolved from it in `run`.
    let cli = nijigen::cli::Cli::parse();
    nijigen::cli::init_tracing(cli.verbose, cli.quiet);
    match nijigen::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => nijigen::cli::report(&e),
    }
}
