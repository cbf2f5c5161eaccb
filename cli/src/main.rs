//! `corralctl`: parse flags, run the command on a Tokio runtime, print the error that ended it.
//! Everything else is in the library (`corral_cli`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use corral_cli::cli::{self, Cli};
use corral_cli::{Outcome, Terminal};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Succeeded) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        // `corralctl get ... | head`: the reader left; there is no one to tell.
        Err(error) if is_broken_pipe(&error) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<corral_cli::Error>(),
        Some(corral_cli::Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe
    )
}

/// The error and its causes, each said once: kube-rs errors repeat their source in their own
/// message, which anyhow's `{:#}` would print twice.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    // One crypto provider for rustls, chosen before any client exists (see DEPENDENCIES.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    let mut stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut term = Terminal {
        out: &mut out,
        err: &mut err,
    };
    let outcome = runtime.block_on(cli::run(cli, &mut stdin, &mut term))?;
    Ok(outcome)
}
