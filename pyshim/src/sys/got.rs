//! Rewriting one loaded library's imports: the entries of its global offset table (GOT)
//! that name a given libc function, so that library's calls go to ours instead.
//!
//! Only the library found is affected (every other object keeps calling libc), and
//! only the slots its relocations name: `R_*_JUMP_SLOT` (calls through the PLT) and
//! `R_*_GLOB_DAT` (the function's address taken). The relocation tables are read from
//! the loaded image's `PT_DYNAMIC` (`DT_JMPREL`/`DT_PLTRELSZ`, `DT_RELA`/`DT_RELASZ`,
//! `DT_SYMTAB`, `DT_STRTAB`); a slot in the `PT_GNU_RELRO` range is made writable for
//! the store and read-only again after it.
//!
//! The callers keep calling libc themselves for the real function (a lazily bound
//! slot's old value is the PLT stub, whose resolver would write the slot back).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `PT_DYNAMIC`, `PT_GNU_RELRO`.
const PT_DYNAMIC: u32 = 2;
const PT_GNU_RELRO: u32 = 0x6474_e552;
/// Dynamic tags.
const DT_NULL: i64 = 0;
const DT_PLTRELSZ: i64 = 2;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_RELA: i64 = 7;
const DT_RELASZ: i64 = 8;
const DT_JMPREL: i64 = 23;

#[cfg(target_arch = "x86_64")]
const R_GLOB_DAT: u32 = 6;
#[cfg(target_arch = "x86_64")]
const R_JUMP_SLOT: u32 = 7;
#[cfg(target_arch = "aarch64")]
const R_GLOB_DAT: u32 = 1025;
#[cfg(target_arch = "aarch64")]
const R_JUMP_SLOT: u32 = 1026;

#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

#[repr(C)]
struct Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// A loaded library: its load bias and where its `PT_DYNAMIC` and `PT_GNU_RELRO` are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Library {
    base: usize,
    dynamic: usize,
    relro: (usize, usize),
}

/// One GOT slot naming a function: its address and the symbol's index in `names`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// Address of the slot.
    pub(crate) addr: usize,
    /// Which of the names asked for.
    pub(crate) which: usize,
    relro: bool,
}

struct Search<'a> {
    suffix: &'a [u8],
    found: Option<Library>,
}

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: `data` is the `Search` `find_library` passed (alive during dl_iterate_phdr), and
    // `info` the loader's record of one object, valid during this callback.
    let (search, info) = unsafe { (&mut *(data as *mut Search<'_>), &*info) };
    if info.dlpi_name.is_null() {
        return 0;
    }
    // SAFETY: dlpi_name is the loader's NUL-terminated path of the object.
    let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
    let file = name.rsplit(|&b| b == b'/').next().unwrap_or(name);
    if file != search.suffix {
        return 0;
    }
    let mut lib = Library {
        base: info.dlpi_addr as usize,
        dynamic: 0,
        relro: (0, 0),
    };
    for i in 0..info.dlpi_phnum as usize {
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers of the loaded object.
        let ph = unsafe { &*info.dlpi_phdr.add(i) };
        let start = lib.base + ph.p_vaddr as usize;
        match ph.p_type {
            PT_DYNAMIC => lib.dynamic = start,
            PT_GNU_RELRO => lib.relro = (start, start + ph.p_memsz as usize),
            _ => {}
        }
    }
    if lib.dynamic != 0 {
        search.found = Some(lib);
        return 1;
    }
    0
}

/// The loaded library whose file name is `file` (e.g. `libc10.so`), if any.
pub(crate) fn find_library(file: &str) -> Option<Library> {
    let mut search = Search {
        suffix: file.as_bytes(),
        found: None,
    };
    // SAFETY: `visit` matches dl_iterate_phdr's callback type and only reads the records;
    // `search` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut search as *mut Search<'_> as *mut c_void) };
    search.found
}

impl Library {
    /// An address from the dynamic section: glibc relocates most of them in place (then
    /// they are absolute), other loaders leave them as offsets from the load bias.
    fn addr(&self, v: u64) -> usize {
        let v = v as usize;
        if v < self.base {
            self.base + v
        } else {
            v
        }
    }

    /// Every `JUMP_SLOT` and `GLOB_DAT` slot of this library that names one of `names`.
    pub(crate) fn slots(&self, names: &[&str]) -> Vec<Slot> {
        let (mut jmprel, mut pltrelsz, mut rela, mut relasz, mut symtab, mut strtab) =
            (0, 0, 0, 0, 0, 0);
        let mut d = self.dynamic as *const Dyn;
        loop {
            // SAFETY: `dynamic` is the object's PT_DYNAMIC, an array of Dyn ending in DT_NULL.
            let e = unsafe { &*d };
            match e.tag {
                DT_NULL => break,
                DT_JMPREL => jmprel = self.addr(e.val),
                DT_PLTRELSZ => pltrelsz = e.val as usize,
                DT_RELA => rela = self.addr(e.val),
                DT_RELASZ => relasz = e.val as usize,
                DT_SYMTAB => symtab = self.addr(e.val),
                DT_STRTAB => strtab = self.addr(e.val),
                _ => {}
            }
            d = d.wrapping_add(1);
        }
        if symtab == 0 || strtab == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (table, size) in [(jmprel, pltrelsz), (rela, relasz)] {
            if table == 0 {
                continue;
            }
            for i in 0..size / std::mem::size_of::<Rela>() {
                // SAFETY: the loader's relocation table: `size` bytes of Rela records.
                let r = unsafe { &*(table as *const Rela).add(i) };
                let (kind, sym) = ((r.info & 0xffff_ffff) as u32, (r.info >> 32) as usize);
                if (kind != R_JUMP_SLOT && kind != R_GLOB_DAT) || sym == 0 {
                    continue;
                }
                // SAFETY: relocations name symbols of the object's own symbol table, whose
                // names are offsets into its NUL-terminated string table.
                let name = unsafe {
                    let s = &*(symtab as *const Sym).add(sym);
                    CStr::from_ptr((strtab + s.name as usize) as *const c_char)
                };
                let Some(which) = names.iter().position(|n| n.as_bytes() == name.to_bytes()) else {
                    continue;
                };
                let addr = self.base + r.offset as usize;
                out.push(Slot {
                    addr,
                    which,
                    relro: addr >= self.relro.0 && addr < self.relro.1,
                });
            }
        }
        out
    }
}

/// Stores `value` into a GOT slot (atomically: threads calling through it meanwhile
/// see the old or the new function) and returns the old value. A slot in the RELRO
/// range is made writable for the store and read-only again after it.
pub(crate) fn write_slot(slot: &Slot, value: usize) -> io::Result<usize> {
    let page = 4096usize;
    let start = slot.addr & !(page - 1);
    let len = (slot.addr + std::mem::size_of::<usize>()).div_ceil(page) * page - start;
    let protect = |prot: c_int| -> io::Result<()> {
        // SAFETY: the pages holding the slot, part of the library's own writable-at-load data
        // segment: changing their protection touches nothing else.
        if unsafe { libc::mprotect(start as *mut c_void, len, prot) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    protect(libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: the slot is an aligned pointer-sized word of the GOT, writable now; the loader
    // and the library only ever load it, so an atomic store is race-free.
    let old = unsafe { (*(slot.addr as *const AtomicUsize)).swap(value, Ordering::AcqRel) };
    if slot.relro {
        protect(libc::PROT_READ)?;
    }
    Ok(old)
}

/// The value a GOT slot holds now.
pub(crate) fn read_slot(slot: &Slot) -> usize {
    // SAFETY: the slot is an aligned pointer-sized word of a loaded library's GOT (readable).
    unsafe { (*(slot.addr as *const AtomicUsize)).load(Ordering::Acquire) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_loaded_librarys_slots_and_rewrites_them() {
        // libgcc_s is loaded into every Rust test binary (unwinding) and imports `free`.
        let lib = find_library("libgcc_s.so.1").expect("libgcc_s.so.1 is loaded");
        assert!(find_library("libnodecell-no-such.so").is_none());
        let slots = lib.slots(&["no_such_function", "free"]);
        assert!(!slots.is_empty(), "libgcc_s imports free");
        assert!(slots.iter().all(|s| s.which == 1 && s.addr > lib.base));
        // Writing a slot's own value back exercises the protection change and the store.
        for s in &slots {
            let now = read_slot(s);
            assert_eq!(write_slot(s, now).unwrap(), now);
            assert_eq!(read_slot(s), now);
        }
    }
}
