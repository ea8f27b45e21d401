//! `cargo bench --bench coco_eval`: see [`maskstudio::bench::coco_eval`].

fn main() -> anyhow::Result<()> {
    maskstudio::bench::coco_eval::run()
}
