use clap::Parser;

mod sqlite_malloc;

// mimalloc instead of glibc's malloc: a request allocates and frees dozens of small buffers
// (headers, form fields, rows), and glibc's free lists and `malloc_consolidate` were 9% of
// the server's CPU under load. The benchmark's bare handler uses the same allocator, so the
// ceiling it measures stays that of the same stack.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Before anything opens a database (SQLite accepts an allocator only before its first use).
    if !sqlite_malloc::install() {
        eprintln!("latch: SQLite keeps the system allocator (it was already in use)");
    }
    serve()
}

#[tokio::main]
async fn serve() -> std::process::ExitCode {
    let cli = latch::cli::Cli::parse();
    match latch::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
