//! `pdb-witness`: the command line (`cli`) runs the server or a command.

fn main() -> std::process::ExitCode {
    // Everything the witness writes — group files and their WAL, the
    // directory, snapshots, backups — is private to its user, like its key.
    // SAFETY: umask only sets the process's file-creation mask.
    unsafe {
        libc::umask(0o077);
    }
    match pdb_witness::cli::Cli::from_args().run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pdb-witness: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
