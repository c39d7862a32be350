/// mimalloc: the AWS SDK allocates and frees many small objects per request, and glibc's
/// malloc was about 15 % of s3drop's CPU with many small files (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    s3drop::cli::main()
}
