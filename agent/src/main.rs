fn main() -> std::process::ExitCode {
    vfsdr::cli::main()
}
