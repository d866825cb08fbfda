fn main() {
    eprintln!("strait-jepsen: not yet");
    std::process::exit(2);
}
