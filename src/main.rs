//! The `nijigen` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    // One parse: the values, and where each came from (given or clap's default), which the
    // settings need to let nijigen.toml fill what the command line leaves out.
    let matches = nijigen::cli::Cli::command().get_matches();
    let cli = match nijigen::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    nijigen::cli::init_tracing(cli.verbose, cli.quiet);
    match nijigen::cli::run_with(cli, Some(&matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => nijigen::cli::report(&e),
    }
}
