fn main() -> anyhow::Result<()> {
    env_logger::init();
    let _ebpf = helo_filter::kernel::load(&Default::default())?;
    println!("loaded ok");
    Ok(())
}
