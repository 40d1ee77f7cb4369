//! FastCDC with pyfastcdc's cut points, and one large file read, cut, hashed and compressed per
//! GIL-free call (ADR 0083).
//!
//! `Cdc` is a port of pyfastcdc 0.3.1's reference (`pyfastcdc/py/fastcdc.py`, `constants.py`: the
//! "2020" FastCDC, two bytes per step with the left-shifted gear table, normalisation level 1, the
//! gear tables XOR-ed with a non-zero `seed`). The agent's repositories were chunked by pyfastcdc,
//! and the same data must give the same chunks on every agent, so every cut must be the one
//! pyfastcdc makes: `agent/tests/test_agent_native_large.py` compares them on random and structured
//! data, every size range edge and seeds zero and non-zero.
//!
//! `FileCutter` is `FileReader`'s large-file step: read the descriptor into a buffer of pyfastcdc's
//! stream size (the maximum chunk size plus as much again, at least 8 KiB), cut only where
//! pyfastcdc's stream chunker would (at least the maximum size in the buffer, or the end of the
//! file), and for each chunk the keyed BLAKE3 id and zstd at the agent's level (the content itself
//! when zstd is not smaller). The bytes after the last cut stay in the buffer for the next step.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

/// pyfastcdc's `MASKS` (`pyfastcdc/py/constants.py`), indexed by log2 of the average size plus or
/// minus the normalisation level.
const MASKS: [u64; 26] = [
    0x0000000000000000,
    0x0000000000000000,
    0x0000000000000000,
    0x0000000000000000,
    0x0000000000000000,
    0x0000000001804110,
    0x0000000001803110,
    0x0000000018035100,
    0x0000001800035300,
    0x0000019000353000,
    0x0000590003530000,
    0x0000D90003530000,
    0x0000D90103530000,
    0x0000D90303530000,
    0x0000D90313530000,
    0x0000D90F03530000,
    0x0000D90303537000,
    0x0000D90703537000,
    0x0000D90707537000,
    0x0000D91707537000,
    0x0000D91747537000,
    0x0000D91767537000,
    0x0000D93767537000,
    0x0000D93777537000,
    0x0000D93777577000,
    0x0000DB3777577000,
];

/// pyfastcdc's `GEAR` table (`GEAR_LS` is each entry shifted left by one).
#[rustfmt::skip]
const GEAR: [u64; 256] = [
    0x3B5D3C7D207E37DC, 0x784D68BA91123086, 0xCD52880F882E7298, 0xEACF8E4E19FDCCA7,
    0xC31F385DFBD1632B, 0x1D5F27001E25ABE6, 0x83130BDE3C9AD991, 0xC4B225676E9B7649,
    0xAA329B29E08EB499, 0xB67FCBD21E577D58, 0x0027BAAADA2ACF6B, 0xE3EF2D5AC73C2226,
    0x0890F24D6ED312B7, 0xA809E036851D7C7E, 0xF0A6FE5E0013D81B, 0x1D026304452CEC14,
    0x03864632648E248F, 0xCDAACF3DCD92B9B4, 0xF5E012E63C187856, 0x8862F9D3821C00B6,
    0xA82F7338750F6F8A, 0x1E583DC6C1CB0B6F, 0x7A3145B69743A7F1, 0xABB20FEE404807EB,
    0xB14B3CFE07B83A5D, 0xB9DC27898ADB9A0F, 0x3703F5E91BAA62BE, 0xCF0BB866815F7D98,
    0x3D9867C41EA9DCD3, 0x1BE1FA65442BF22C, 0x14300DA4C55631D9, 0xE698E9CBC6545C99,
    0x4763107EC64E92A5, 0xC65821FC65696A24, 0x76196C064822F0B7, 0x485BE841F3525E01,
    0xF652BC9C85974FF5, 0xCAD8352FACE9E3E9, 0x2A6ED1DCEB35E98E, 0xC6F483BADC11680F,
    0x3CFD8C17E9CF12F1, 0x89B83C5E2EA56471, 0xAE665CFD24E392A9, 0xEC33C4E504CB8915,
    0x3FB9B15FC9FE7451, 0xD7FD1FD1945F2195, 0x31ADE0853443EFD8, 0x255EFC9863E1E2D2,
    0x10EAB6008D5642CF, 0x46F04863257AC804, 0xA52DC42A789A27D3, 0xDAAADF9CE77AF565,
    0x6B479CD53D87FEBB, 0x6309E2D3F93DB72F, 0xC5738FFBAA1FF9D6, 0x6BD57F3F25AF7968,
    0x67605486D90D0A4A, 0xE14D0B9663BFBDAE, 0xB7BBD8D816EB0414, 0xDEF8A4F16B35A116,
    0xE7932D85AAAFFED6, 0x08161CBAE90CFD48, 0x855507BEB294F08B, 0x91234EA6FFD399B2,
    0xAD70CF4B2435F302, 0xD289A97565BC2D27, 0x8E558437FFCA99DE, 0x96D2704B7115C040,
    0x0889BBCDFC660E41, 0x5E0D4E67DC92128D, 0x72A9F8917063ED97, 0x438B69D409E016E3,
    0xDF4FED8A5D8A4397, 0x00F41DCF41D403F7, 0x4814EB038E52603F, 0x9DAFBACC58E2D651,
    0xFE2F458E4BE170AF, 0x4457EC414DF6A940, 0x06E62F1451123314, 0xBD1014D173BA92CC,
    0xDEF318E25ED57760, 0x9FEA0DE9DFCA8525, 0x459DE1E76C20624B, 0xAEEC189617E2D666,
    0x126A2C06AB5A83CB, 0xB1321532360F6132, 0x65421503DBB40123, 0x2D67C287EA089AB3,
    0x6C93BFF5A56BD6B6, 0x4FFB2036CAB6D98D, 0xCE7B785B1BE7AD4F, 0xEDB42EF6189FD163,
    0xDC905288703988F6, 0x365F9C1D2C691884, 0xC640583680D99BFE, 0x3CD4624C07593EC6,
    0x7F1EA8D85D7C5805, 0x014842D480B57149, 0x0B649BCB5A828688, 0xBCD5708ED79B18F0,
    0xE987C862FBD2F2F0, 0x982731671F0CD82C, 0xBAF13E8B16D8C063, 0x8EA3109CBD951BBA,
    0xD141045BFB385CAD, 0x2ACBC1A0AF1F7D30, 0xE6444D89DF03BFDF, 0xA18CC771B8188FF9,
    0x9834429DB01C39BB, 0x214ADD07FE086A1F, 0x8F07C19B1F6B3FF9, 0x56A297B1BF4FFE55,
    0x94D558E493C54FC7, 0x40BFC24C764552CB, 0x931A706F8A8520CB, 0x32229D322935BD52,
    0x2560D0F5DC4FEFAF, 0x9DBCC48355969BB6, 0x0FD81C3985C0B56A, 0xE03817E1560F2BDA,
    0xC1BB4F81D892B2D5, 0xB0C4864F4E28D2D7, 0x3ECC49F9D9D6C263, 0x51307E99B52BA65E,
    0x8AF2B688DA84A752, 0xF5D72523B91B20B6, 0x6D95FF1FF4634806, 0x562F21555458339A,
    0xC0CE47F889336346, 0x487823E5089B40D8, 0xE4727C7EBC6D9592, 0x5A8F7277E94970BA,
    0xFCA2F406B1C8BB50, 0x5B1F8A95F1791070, 0xD304AF9FC9028605, 0x5440AB7FC930E748,
    0x312D25FBCA2AB5A1, 0x10F4A4B234A4D575, 0x90301D55047E7473, 0x3B6372886C61591E,
    0x293402B77C444E06, 0x451F34A4D3E97DD7, 0x3158D814D81BC57B, 0x034942425B9BDA69,
    0xE2032FF9E532D9BB, 0x62AE066B8B2179E5, 0x9545E10C2F8D71D8, 0x7FF7483EB2D23FC0,
    0x00945FCEBDC98D86, 0x8764BBBE99B26CA2, 0x1B1EC62284C0BFC3, 0x58E0FCC4F0AA362B,
    0x5F4ABEFA878D458D, 0xFD74AC2F9607C519, 0xA4E3FB37DF8CBFA9, 0xBF697E43CAC574E5,
    0x86F14A3F68F4CD53, 0x24A23D076F1CE522, 0xE725CD8048868CC8, 0xBF3C729EB2464362,
    0xD8F6CD57B3CC1ED8, 0x6329E52425541577, 0x62AA688AD5AE1AC0, 0x0A242566269BF845,
    0x168B1A4753ACA74B, 0xF789AFEFFF2E7E3C, 0x6C3362093B6FCCDB, 0x4CE8F50BD28C09B2,
    0x006A2DB95AE8AA93, 0x975B0D623C3D1A8C, 0x18605D3935338C5B, 0x5BB6F6136CAD3C71,
    0x0F53A20701F8D8A6, 0xAB8C5AD2E7E93C67, 0x40B5AC5127ACAA29, 0x8C7BF63C2075895F,
    0x78BD9F7E014A805C, 0xB2C9E9F4F9C8C032, 0xEFD6049827EB91F3, 0x2BE459F482C16FBD,
    0xD92CE0C5745AAA8C, 0x0AAA8FB298D965B9, 0x2B37F92C6C803B15, 0x8C54A5E94E0F0E78,
    0x95F9B6E90C0A3032, 0xE7939FAA436C7874, 0xD16BFE8F6A8A40C9, 0x44982B86263FD2FA,
    0xE285FB39F984E583, 0x779A8DF72D7619D3, 0xF2D79A8DE8D5DD1E, 0xD1037354D66684E2,
    0x004C82A4E668A8E5, 0x31D40A7668B044E6, 0xD70578538BD02C11, 0xDB45431078C5F482,
    0x977121BB7F6A51AD, 0x73D5CCBD34EFF8DD, 0xE437A07D356E17CD, 0x47B2782043C95627,
    0x9FB251413E41D49A, 0xCCD70B60652513D3, 0x1C95B31E8A1B49B2, 0xCAE73DFD1BCB4C1B,
    0x34D98331B1F5B70F, 0x784E39F22338D92F, 0x18613D4A064DF420, 0xF1D8DAE25F0BCEBE,
    0x33F77C15AE855EFC, 0x3C88B3B912EB109C, 0x956A2EC96BAFEEA5, 0x1AA005B5E0AD0E87,
    0x5500D70527C4BB8E, 0xE36C57196421CC44, 0x13C4D286CC36EE39, 0x5654A23D818B2A81,
    0x77B1DC13D161ABDC, 0x734F44DE5F8D5EB5, 0x60717E174A6C89A2, 0xD47D9649266A211E,
    0x5B13A4322BB69E90, 0xF7669609F8B5FC3C, 0x21E6AC55BEDCDAC9, 0x9B56B62B61166DEA,
    0xF48F66B939797E9C, 0x35F332F9C0E6AE9A, 0xCC733F6A9A878DB0, 0x3DA161E41CC108C2,
    0xB7D74AE535914D51, 0x4D493B0B11D36469, 0xCE264D1DFBA9741A, 0xA9D1F2DC7436DC06,
    0x70738016604C2A27, 0x231D36E96E93F3D5, 0x7666881197838D19, 0x4A2A83090AAAD40C,
    0xF1E761591668B35D, 0x7363236497F730A7, 0x301080E37379DD4D, 0x502DEA2971827042,
    0xC2C5EB858F32625F, 0x786AFB9EDFAFBDFF, 0xDAEE0D868490B2A4, 0x617366B3268609F6,
    0xAE0E35A0FE46173E, 0xD1A07DE93E824F11, 0x079B8B115EA4CCA8, 0x93A99274558FAEBB,
    0xFB1E6E22E08A03B3, 0xEA635FDBA3698DD0, 0xCF53659328503A5C, 0xCDE3B31E6FD5D780,
    0x8E3E4221D3614413, 0xEF14D0D86BF1A22C, 0xE1D830D3F16C5DDB, 0xAABD2B2A451504E1,
];

// pyfastcdc's accepted ranges (its `*_SIZE_LOWER_BOUND` / `*_SIZE_UPPER_BOUND`).
const MIN_RANGE: (usize, usize) = (64, 1 << 20);
const AVG_RANGE: (usize, usize) = (256, 4 << 20);
const MAX_RANGE: (usize, usize) = (1024, 16 << 20);
/// pyfastcdc's default normalisation level, the one the agent has always used.
const NORMALIZATION: usize = 1;

/// One repository's FastCDC: sizes, masks and (seeded) gear tables.
#[derive(Clone)]
pub struct Cdc {
    min_size: usize,
    avg_size: usize,
    max_size: usize,
    mask_s: u64,
    mask_l: u64,
    mask_s_ls: u64,
    mask_l_ls: u64,
    gear: [u64; 256],
    gear_ls: [u64; 256],
}

/// pyfastcdc's `utils.logarithm2`: `floor(log2(value) + 0.5)`, in floating point as there.
fn logarithm2(value: usize) -> usize {
    if value == 0 {
        return 0;
    }
    ((value as f64).log2() + 0.5).floor() as usize
}

impl Cdc {
    /// The sizes' checks and messages are pyfastcdc's (`FastCDC.__init__`).
    pub fn new(
        min_size: usize,
        avg_size: usize,
        max_size: usize,
        seed: u64,
    ) -> Result<Cdc, String> {
        let within = |value: usize, (low, high): (usize, usize)| low <= value && value <= high;
        if !within(avg_size, AVG_RANGE) {
            return Err(format!(
                "avg_size {avg_size} is out of range [{}, {}]",
                AVG_RANGE.0, AVG_RANGE.1
            ));
        }
        if !within(min_size, MIN_RANGE) {
            return Err(format!(
                "min_size {min_size} is out of range [{}, {}]",
                MIN_RANGE.0, MIN_RANGE.1
            ));
        }
        if !within(max_size, MAX_RANGE) {
            return Err(format!(
                "max_size {max_size} is out of range [{}, {}]",
                MAX_RANGE.0, MAX_RANGE.1
            ));
        }
        if !(min_size <= avg_size && avg_size <= max_size) {
            return Err(format!(
                "avg_size {avg_size} is out of range [{min_size}, {max_size}]"
            ));
        }
        if seed >= 1 << 63 {
            // pyfastcdc refuses it too (OverflowError: its `seed << 1` must fit 64 bits); seeds are 32-bit.
            return Err(format!("seed {seed} is out of range [0, 2**63)"));
        }
        let bits = logarithm2(avg_size);
        let mask_s = MASKS[bits + NORMALIZATION];
        let mask_l = MASKS[bits - NORMALIZATION];
        let mut gear = GEAR;
        let mut gear_ls = GEAR.map(|g| g << 1);
        if seed > 0 {
            // pyfastcdc: `GEAR[i] ^ seed` and `GEAR_LS[i] ^ (seed << 1)`, both modulo 2**64.
            gear = gear.map(|g| g ^ seed);
            gear_ls = gear_ls.map(|g| g ^ (seed << 1));
        }
        Ok(Cdc {
            min_size,
            avg_size,
            max_size,
            mask_s,
            mask_l,
            mask_s_ls: mask_s << 1,
            mask_l_ls: mask_l << 1,
            gear,
            gear_ls,
        })
    }

    /// The length of the chunk that starts `buf` (pyfastcdc's `_cut_gear`): all of it when it is at
    /// most the minimum size; never more than the maximum size. Only the first `max_size` bytes
    /// count, so a buffer holding at least that many, or the rest of the data, cuts as the whole.
    pub fn cut(&self, buf: &[u8]) -> usize {
        let mut remaining = buf.len();
        if remaining <= self.min_size {
            return remaining;
        }
        let mut center = self.avg_size;
        if remaining > self.max_size {
            remaining = self.max_size;
        } else if remaining < center {
            center = remaining;
        }
        let start = (self.min_size / 2) * 2;
        let mid = (center / 2) * 2; // at least `start`: the minimum size is at most the centre
        let end = (remaining / 2) * 2;
        // Below the centre the stricter mask (fewer cuts), from it the looser one.
        let hash = match self.roll(buf, start, mid, self.mask_s, self.mask_s_ls, 0) {
            Ok(cut) => return cut,
            Err(hash) => hash,
        };
        match self.roll(buf, mid, end, self.mask_l, self.mask_l_ls, hash) {
            Ok(cut) => cut,
            Err(_) => remaining,
        }
    }

    /// One of `cut`'s two loops (pyfastcdc's): from `pos` to `end`, two bytes per step, the first
    /// through the left-shifted gear table and `mask_ls`, the second through the gear table and
    /// `mask`. The cut point, or the hash at `end` for the next loop.
    #[inline(always)]
    fn roll(
        &self,
        buf: &[u8],
        mut pos: usize,
        end: usize,
        mask: u64,
        mask_ls: u64,
        mut hash: u64,
    ) -> Result<usize, u64> {
        while pos < end {
            hash = (hash << 2).wrapping_add(self.gear_ls[buf[pos] as usize]);
            if hash & mask_ls == 0 {
                return Ok(pos);
            }
            hash = hash.wrapping_add(self.gear[buf[pos + 1] as usize]);
            if hash & mask == 0 {
                return Ok(pos + 1);
            }
            pos += 2;
        }
        Err(hash)
    }

    /// pyfastcdc's stream buffer (`StreamChunker.buf_capacity`).
    fn stream_capacity(&self) -> usize {
        self.max_size + self.max_size.max(8 * 1024)
    }
}

/// pyfastcdc's `FastCDC(avg_size, min_size=..., max_size=..., seed=...)`, refused alike.
fn cdc(min_size: usize, avg_size: usize, max_size: usize, seed: u64) -> PyResult<Cdc> {
    Cdc::new(min_size, avg_size, max_size, seed).map_err(pyo3::exceptions::PyValueError::new_err)
}

/// The lengths of the chunks `FastCDC(avg_size, min_size=min_size, max_size=max_size,
/// seed=seed).cut_buf(data)` yields, in order (none for empty data).
#[pyfunction]
fn cdc_cuts(
    py: Python<'_>,
    data: &[u8],
    min_size: usize,
    avg_size: usize,
    max_size: usize,
    seed: u64,
) -> PyResult<Vec<usize>> {
    let cdc = cdc(min_size, avg_size, max_size, seed)?;
    Ok(py.allow_threads(|| {
        let mut cuts = Vec::new();
        let mut offset = 0;
        while offset < data.len() {
            let cut = cdc.cut(&data[offset..]);
            cuts.push(cut);
            offset += cut;
        }
        cuts
    }))
}

struct Cut {
    id: [u8; 32],
    compressed: bool,
    payload: Payload,
    raw_length: usize,
}

/// A chunk's payload: encoded, or (no level) its raw content where it is in the cutter's buffer,
/// copied once into the result (the step returns before the buffer moves: see `FileCutter::run`).
enum Payload {
    Encoded(Vec<u8>),
    Buffered(usize),
}

/// What one step did: its chunks, the bytes it read, whether the file's end was cut, and the errno
/// of a failed read (0: none; the chunks before it are still returned).
struct StepOut {
    chunks: Vec<Cut>,
    bytes_read: u64,
    done: bool,
    errno: i32,
}

/// zstd at `level` (`crate::smaller_frame`, the worker thread's context shared with the small
/// files' read), or the content itself when that is not smaller (`chunking.compress`).
fn compress_slice(level: i32, content: &[u8]) -> Result<(bool, Vec<u8>), i32> {
    Ok(match crate::smaller_frame(level, content)? {
        Some(frame) => (true, frame),
        None => (false, content.to_vec()),
    })
}

/// One large file's reading and cutting, one bounded step at a time (`FileReader` drives it).
///
/// It does not own the descriptor: the caller opens it (`read.open_for_backup`), checks it with
/// `fstat` before and after, and closes it. Between steps it holds the bytes read but not yet cut
/// (at most the stream buffer, twice the maximum chunk size).
///
/// Reads follow pyfastcdc's stream chunker: once fewer than the maximum chunk size are buffered,
/// fill the buffer to its end (or the file's) before cutting again. Read one at a time (under a
/// throttle: the caller charges each), their sizes and order are those of `FileReader`'s reads
/// with the gateway's sizes (each at most `READ_SIZE`), so a file that changes while it is read
/// ends the same on both paths.
#[pyclass(module = "strongroom_agent._native")]
struct FileCutter {
    cdc: Cdc,
    key: [u8; 32],
    /// zstd at this level in the step (a file the previous point did not have: its chunks are
    /// almost all new); None: the chunks come back raw, for the compress stage after dedup.
    level: Option<i32>,
    buf: Vec<u8>,
    /// Where the bytes not yet cut begin in `buf`.
    start: usize,
    /// A refill started: read until the buffer is full or the file ends.
    filling: bool,
    /// The file ended: what is buffered is the rest of it.
    eof: bool,
    /// Bytes read since the last reset.
    total: u64,
    /// Read no further than this many bytes in all (u64::MAX: until a read returns nothing).
    read_end: u64,
    /// A read that brings the total to exactly this many bytes ends the file.
    ends_at: Option<u64>,
}

impl FileCutter {
    /// Read (at most one read of at most `one_read` bytes when given, else as many as the buffer
    /// takes) and cut while at least the maximum chunk size is buffered or the file has ended; stop
    /// once `batch_bytes` of chunks are cut, after the one read, when the file's end is cut, or
    /// (no level) before a refill would move the buffer under raw chunks already cut.
    fn run(&mut self, fd: libc::c_int, one_read: Option<usize>, batch_bytes: usize) -> StepOut {
        let mut out = StepOut {
            chunks: Vec::new(),
            bytes_read: 0,
            done: false,
            errno: 0,
        };
        let capacity = self.cdc.stream_capacity();
        let mut produced = 0;
        loop {
            let buffered = self.buf.len() - self.start;
            if !self.eof && (self.filling || buffered < self.cdc.max_size) {
                if !self.filling {
                    if self.level.is_none() && !out.chunks.is_empty() {
                        return out; // raw chunks point into the buffer: hand them over before it moves
                    }
                    self.buf.copy_within(self.start.., 0);
                    self.buf.truncate(buffered);
                    self.start = 0;
                    self.buf.reserve_exact(capacity - self.buf.len());
                    self.filling = true;
                }
                let room = capacity - self.buf.len();
                if room == 0 {
                    self.filling = false;
                    continue;
                }
                if self.total >= self.read_end {
                    self.eof = true; // FileReader's whole-file read: the size and one byte, no more
                    continue;
                }
                let left = usize::try_from(self.read_end - self.total).unwrap_or(usize::MAX);
                let want = room.min(left).min(one_read.unwrap_or(usize::MAX));
                let len = self.buf.len();
                // SAFETY: the spare capacity is at least `room` >= `want` bytes; read() writes at
                // most `want` bytes there.
                let n = unsafe { libc::read(fd, self.buf.as_mut_ptr().add(len).cast(), want) };
                if n < 0 {
                    match crate::errno() {
                        libc::EINTR => continue,
                        code => {
                            out.errno = code;
                            return out;
                        }
                    }
                }
                if n == 0 {
                    self.eof = true;
                    continue;
                }
                // SAFETY: read() initialised these `n` bytes.
                unsafe { self.buf.set_len(len + n as usize) };
                out.bytes_read += n as u64;
                self.total += n as u64;
                if self.ends_at == Some(self.total) {
                    self.eof = true; // FileReader._read_small: all of the size in, no read to see the end
                }
                if one_read.is_some() {
                    return out;
                }
                continue;
            }
            self.filling = false;
            if buffered == 0 {
                out.done = true;
                return out;
            }
            let cut = self.cdc.cut(&self.buf[self.start..]);
            let content = &self.buf[self.start..self.start + cut];
            let id = *blake3::keyed_hash(&self.key, content).as_bytes();
            match self.level.map(|level| compress_slice(level, content)) {
                Some(Ok((compressed, payload))) => out.chunks.push(Cut {
                    id,
                    compressed,
                    payload: Payload::Encoded(payload),
                    raw_length: cut,
                }),
                None => out.chunks.push(Cut {
                    id,
                    compressed: false,
                    payload: Payload::Buffered(self.start),
                    raw_length: cut,
                }),
                Some(Err(code)) => {
                    out.errno = code;
                    return out;
                }
            }
            self.start += cut;
            produced += cut;
            if produced >= batch_bytes {
                return out;
            }
        }
    }
}

#[pymethods]
impl FileCutter {
    /// A cutter for one file with the repository's FastCDC sizes and gear `seed` (ValueError as
    /// pyfastcdc for sizes it refuses), the 32-byte chunk-id `key` and the zstd `level` (None: no
    /// compression in the step, each chunk's payload is its raw content).
    #[new]
    #[pyo3(signature = (key, level, min_size, avg_size, max_size, seed))]
    fn new(
        key: &[u8],
        level: Option<i32>,
        min_size: usize,
        avg_size: usize,
        max_size: usize,
        seed: u64,
    ) -> PyResult<Self> {
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| pyo3::exceptions::PyValueError::new_err("key must be 32 bytes"))?;
        Ok(FileCutter {
            cdc: cdc(min_size, avg_size, max_size, seed)?,
            key,
            level,
            buf: Vec::new(),
            start: 0,
            filling: false,
            eof: false,
            total: 0,
            read_end: u64::MAX,
            ends_at: None,
        })
    }

    /// Forget what was read and free the buffer: the next step starts at the descriptor's offset
    /// (seek it to 0 first). It reads at most `read_end` bytes in all (None: until a read returns
    /// nothing), and a read that brings the total to exactly `ends_at` bytes ends the file.
    #[pyo3(signature = (read_end=None, ends_at=None))]
    fn reset(&mut self, read_end: Option<u64>, ends_at: Option<u64>) {
        self.buf = Vec::new();
        self.start = 0;
        self.filling = false;
        self.eof = false;
        self.total = 0;
        self.read_end = read_end.unwrap_or(u64::MAX);
        self.ends_at = ends_at;
    }

    /// Free the buffer (the file is done; a `reset` starts over).
    fn release(&mut self) {
        self.reset(None, None);
    }

    /// One step on descriptor `fd`, with the GIL released throughout: at most one read of at most
    /// `one_read` bytes (None: as many reads as the buffer takes) and chunks cut until
    /// `batch_bytes` of them are.
    /// Returns `(chunks, bytes_read, done, errno)`: `chunks` a list of `(id, compressed, payload,
    /// raw_length)` as `read_small_files` gives them (without a level: `compressed` false and the
    /// payload the raw content), `done` whether the file's end was cut (the
    /// next step would cut nothing), `errno` that of a failed read (0: none).
    #[pyo3(signature = (fd, one_read, batch_bytes))]
    fn step<'py>(
        mut slf: PyRefMut<'py, Self>,
        fd: libc::c_int,
        one_read: Option<usize>,
        batch_bytes: usize,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let this: &mut FileCutter = &mut slf;
        let out = py.allow_threads(|| this.run(fd, one_read, batch_bytes));
        let mut chunks = Vec::with_capacity(out.chunks.len());
        for cut in out.chunks {
            let id = PyBytes::new(py, &cut.id);
            let payload = match &cut.payload {
                Payload::Encoded(payload) => PyBytes::new(py, payload),
                Payload::Buffered(at) => PyBytes::new(py, &this.buf[*at..*at + cut.raw_length]),
            };
            chunks.push((id, cut.compressed, payload, cut.raw_length).into_pyobject(py)?);
        }
        (chunks, out.bytes_read, out.done, out.errno).into_pyobject(py)
    }
}

/// The shape of `FileCutter`'s arguments and `step`'s results; the Python side checks it
/// (`native.CDC_FORMAT`). 2: the level may be None (no compression in the step).
const CDC_FORMAT: u32 = 2;

/// Adds `CDC_FORMAT`, `cdc_cuts` and `FileCutter` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CDC_FORMAT", CDC_FORMAT)?;
    m.add_function(wrap_pyfunction!(cdc_cuts, m)?)?;
    m.add_class::<FileCutter>()
}
