//! The `vsplice` binary: everything lives in the library; see [`vsplice::cli::main`].

fn main() -> std::process::ExitCode {
    vsplice::cli::main()
}
