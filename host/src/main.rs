//! `balut`: the plugin host binary. Everything lives in the library (`src/lib.rs`).

fn main() -> std::process::ExitCode {
    balut::main()
}
