//! `cargo bench --bench masks`: see [`maskstudio::bench::masks`].

fn main() -> anyhow::Result<()> {
    maskstudio::bench::masks::run()
}
