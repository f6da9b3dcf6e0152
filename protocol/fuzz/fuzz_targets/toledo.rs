//! A Toledo byte stream never panics the framer (any checksum mode, any cap) or the decoder,
//! and memory stays within the cap.
#![no_main]

use edge_protocol::framing::Framed;
use edge_protocol::scale::toledo::{self, Checksum, ToledoFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = toledo::parse(data);
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let mode = [Checksum::Auto, Checksum::Always, Checksum::Never][usize::from(head % 3)];
    let cap = usize::from(head / 3).max(1);
    let mut f = ToledoFramer::new(cap, mode);
    for chunk in rest.chunks(usize::from(head % 7) + 1) {
        f.push(chunk);
        assert!(f.pending() <= cap.max(2));
        while let Some(frame) = f.next_frame() {
            if let Framed::Frame(b) = frame {
                assert!(b.len() <= cap.max(2) + 1);
                let _ = toledo::parse(&b);
            }
        }
    }
    f.flush();
});
