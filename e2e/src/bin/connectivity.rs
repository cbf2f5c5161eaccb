//! `connectivity`: runs the connectivity checker against a rack (the kubeconfig of
//! `corral up`, or `$KUBECONFIG`) for a while, then prints what it saw.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Compare every sled's V2P table with where instances really run.
#[derive(Parser)]
struct Args {
    /// The kubeconfig (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// How long to watch, in seconds (Ctrl-C stops earlier).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Milliseconds between rounds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// The `corral certs` directory (`DATA/pki` of `corral up`): the sleds' fault APIs are
    /// asked over HTTPS as its `admin` (without it, over plain HTTP).
    #[arg(long)]
    pki: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = corral_client::connect(args.kubeconfig.as_deref())
        .await
        .context("connecting to the API server")?;
    let http = match &args.pki {
        Some(dir) => {
            let admin = corral_client::tls::KeyPairFiles::in_dir(dir, "admin");
            let tls = corral_client::tls::client_config(&dir.join("ca.crt"), Some(&admin))
                .context("the admin identity")?;
            corral_e2e::http::Http::with_tls(&tls)
        }
        None => corral_e2e::http::Http::new(),
    };
    let stop = CancellationToken::new();
    let checker = tokio::spawn(corral_e2e::connectivity::run(
        client,
        http,
        Duration::from_millis(args.interval_ms),
        stop.clone(),
    ));
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.seconds)) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    stop.cancel();
    let report = checker.await.context("the checker")?;
    print!("{report}");
    if !report.double_runs.is_empty() {
        anyhow::bail!("a guest ran on two sleds at once");
    }
    Ok(())
}
