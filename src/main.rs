fn main() -> std::process::ExitCode {
    s3drop::cli::main()
}
