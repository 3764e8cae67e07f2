//! `pdb-witness`: the command line (`cli`) runs the server or a command.

fn main() -> std::process::ExitCode {
    match pdb_witness::cli::Cli::from_args().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pdb-witness: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
