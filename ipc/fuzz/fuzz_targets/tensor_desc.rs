//! Any bytes into the tensor descriptor decoder and validator: a descriptor that
//! passes `validate_in(size)` must really address only bytes inside the arena.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecell_ipc::TensorDesc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let Ok((d, used)) = TensorDesc::decode(&data[8..]) else { return };
    assert!(used <= data.len() - 8);
    let mut re = Vec::new();
    d.encode(&mut re);
    assert_eq!(&re[..], &data[8..8 + used], "descriptor round trip");
    if d.validate_in(size).is_ok() {
        // Independent check with 128-bit arithmetic: the last element ends inside.
        let item = d.dtype.itemsize() as u128;
        if d.shape().iter().all(|&s| s > 0) {
            let last: u128 = d.shape().iter().zip(d.strides()).map(|(&s, &st)| (s as u128 - 1) * st as u128).sum();
            let end = d.offset as u128 + (last + 1) * item;
            assert!(end <= size as u128, "validated descriptor reaches byte {end} of {size}");
            assert!(d.strides().iter().all(|&s| s >= 0));
        }
        assert!(d.offset as u128 + d.nbytes as u128 <= size as u128);
    }
});
