use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// kpool: pools of cloud machines, reused across runs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs as YAML, or write one file per kind into --out.
    Crdgen {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crdgen { out: Some(dir) }) => {
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in kpool::crdgen::render() {
                std::fs::write(dir.join(file), yaml)?;
            }
        }
        Some(Command::Crdgen { out: None }) => print!("{}", kpool::crdgen::render_all()),
        None => {}
    }
    Ok(())
}
