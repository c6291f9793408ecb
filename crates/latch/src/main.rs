use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = latch::cli::Cli::parse();
    match latch::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
