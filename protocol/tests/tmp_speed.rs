use edge_protocol::barcode::{decode, to_body};
#[test]
#[ignore]
fn speed() {
    let lines: [&[u8]; 4] = [
        b"]C10195012345678903310200123410LOT42\x1d17250200\x1d21SN7",
        b"]C100106141412345678908",
        b"]E04006381333931",
        b"LPN0004711",
    ];
    let n = 1_000_000;
    let t = std::time::Instant::now();
    let mut k = 0usize;
    for i in 0..n {
        let d = decode(lines[i % 4], "NOREAD");
        k += matches!(d, edge_protocol::barcode::Decoded::Scan(_)) as usize;
    }
    let e = t.elapsed();
    eprintln!("decode: {:.0}/s ({k})", n as f64 / e.as_secs_f64());
    let t = std::time::Instant::now();
    for i in 0..n {
        let b = to_body(decode(lines[i % 4], "NOREAD"), None);
        k += b.kind() as usize;
    }
    let e = t.elapsed();
    eprintln!("decode+to_body: {:.0}/s ({k})", n as f64 / e.as_secs_f64());
}
