use std::time::Instant;
use storage::{Durability, Store, Table};
const T: Table<Vec<u8>> = Table::new("t");
fn main() {
    let dir = std::env::args().nth(1).unwrap_or("/tmp/probe".into());
    std::fs::create_dir_all(&dir).unwrap();
    let s = Store::open(format!("{dir}/p.redb"), 1 << 20).unwrap();
    let mut v = Vec::new();
    for i in 0..300u64 {
        let t = Instant::now();
        let w = s.write().unwrap();
        w.put(T, &i.to_be_bytes(), &vec![1u8; 300]).unwrap();
        w.commit(Durability::Immediate).unwrap();
        v.push(t.elapsed().as_micros());
    }
    v.sort();
    println!("redb immediate commit p50 {}us p90 {}us", v[150], v[270]);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).open(format!("{dir}/raw")).unwrap();
    let mut v = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        f.write_all(&[1u8; 300]).unwrap();
        f.sync_data().unwrap();
        v.push(t.elapsed().as_micros());
    }
    v.sort();
    println!("raw fdatasync p50 {}us p90 {}us", v[150], v[270]);
}
