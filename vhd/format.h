/*
 * format — the on-disk structures of VHD 1.0, decoded into native types.
 *
 * Internal to vhd/ (vhd_check, create, inspect, the engine and the tool's
 * offline operations use it; nothing outside vhd/ may). Every structure has a
 * parse function (bytes to native, no judgement), a validate function (meaning
 * of every field, with a message naming the file, the structure and the field)
 * and an encode function (native to bytes, checksum computed). decode = parse
 * + validate. Nothing above this file reads big-endian bytes of the format.
 *
 * Layout facts the rest of vhd/ relies on:
 *  - footer: 512 bytes at the end of every image; dynamic and differencing
 *    images carry a copy at offset 0;
 *  - dynamic header: 1024 bytes at footer.data_offset;
 *  - BAT: max_table_entries big-endian u32 at header.table_offset, padded to
 *    a sector; 0xFFFFFFFF = unallocated, else the sector of the block;
 *  - block: sector bitmap (block_bytes/512 bits, MSB first, padded to 512
 *    bytes), then block_bytes of data.
 */
#ifndef HVSTOR_VHD_FORMAT_H
#define HVSTOR_VHD_FORMAT_H

#include "common.h"
#include "vhd.h"

#define VHD_FOOTER_BYTES 512u
#define VHD_HEADER_BYTES 1024u
#define VHD_BAT_UNALLOCATED 0xFFFFFFFFu
#define VHD_FORMAT_VERSION 0x00010000u
#define VHD_HEADER_VERSION 0x00010000u
#define VHD_FEATURE_TEMPORARY 0x1u
#define VHD_FEATURE_RESERVED 0x2u          /* must always be set */
#define VHD_NO_DATA_OFFSET UINT64_MAX      /* fixed images' footer.data_offset */
/* Seconds between the Unix epoch and 2000-01-01 00:00:00 UTC. */
#define VHD_EPOCH_OFFSET 946684800u
/* Block sizes hvstor accepts: what Virtual PC (512 KiB), Hyper-V, qemu and
 * vhd-util (2 MiB) write, up to where a bitmap stops being a sector or two. */
#define VHD_MIN_BLOCK_BYTES (512u * 1024)
#define VHD_MAX_BLOCK_BYTES (256u * 1024 * 1024)
/* Reading is more lenient than creating: vhd-util makes images up to 2 TiB. */
#define VHD_MAX_READ_SIZE_BYTES (2ull * 1024 * 1024 * 1024 * 1024)
#define VHD_LOCATOR_COUNT 8
#define VHD_PARENT_NAME_UNITS 256           /* UTF-16 code units in the header */
/* CHS limits of the spec's geometry algorithm. */
#define VHD_CHS_MAX_CYLINDERS 65535u
#define VHD_CHS_MAX_HEADS 16u
#define VHD_CHS_MAX_SECTORS 255u

/* Creator fields hvstor writes. qemu's vpc driver computes a disk's size from
 * CHS geometry unless the creator app is one of "win ", "qem2", "d2v ",
 * "CTXS", "tap\0" (or the geometry is the maximum); CHS cannot express most
 * exact sizes, so hvstor writes Hyper-V's creator app and every reader
 * (qemu, libvhdi, Hyper-V, hvstor) then takes the size from current_size.
 * hvstor's own images are recognised by the creator version. */
#define VHD_CREATOR_APP "win "
#define VHD_CREATOR_VERSION 0x68760001u     /* "hv" 0.1 */
#define VHD_CREATOR_OS 0x5769326Bu          /* "Wi2k" */

/* Platform codes of parent locators. */
#define VHD_PLAT_NONE 0u
#define VHD_PLAT_WI2R 0x57693272u           /* "Wi2r", deprecated */
#define VHD_PLAT_WI2K 0x5769326Bu           /* "Wi2k", deprecated */
#define VHD_PLAT_W2RU 0x57327275u           /* "W2ru": relative, UTF-16LE */
#define VHD_PLAT_W2KU 0x57326B75u           /* "W2ku": absolute, UTF-16LE */
#define VHD_PLAT_MAC 0x4D616320u            /* "Mac ": Mac OS alias blob */
#define VHD_PLAT_MACX 0x4D616358u           /* "MacX": file:// URL, UTF-8 */

struct vhd_footer {
    uint8_t cookie[8];
    uint32_t features;
    uint32_t format_version;
    uint64_t data_offset;
    uint32_t timestamp;
    uint8_t creator_app[4];
    uint32_t creator_version;
    uint32_t creator_os;
    uint64_t original_size;
    uint64_t current_size;
    struct vhd_geometry geometry;
    uint32_t disk_type;
    uint32_t checksum;                      /* as stored */
    uint32_t computed_checksum;             /* parse fills it from the bytes */
    uint8_t uuid[16];
    uint8_t saved_state;
};

struct vhd_locator {
    uint32_t code;                          /* VHD_PLAT_* */
    uint32_t data_space;                    /* as stored: sectors or bytes */
    uint32_t data_length;                   /* bytes */
    uint64_t data_offset;
};

struct vhd_header {
    uint8_t cookie[8];
    uint64_t data_offset;
    uint64_t table_offset;
    uint32_t header_version;
    uint32_t max_table_entries;
    uint32_t block_bytes;
    uint32_t checksum;
    uint32_t computed_checksum;
    uint8_t parent_uuid[16];
    uint32_t parent_timestamp;
    uint16_t parent_name[VHD_PARENT_NAME_UNITS];   /* native code units */
    struct vhd_locator locators[VHD_LOCATOR_COUNT];
};

/* Ones' complement of the byte sum of `len` bytes, the 4 bytes at
 * `checksum_at` counted as zero. */
uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t checksum_at);

/* ---------------------------------------------------------------- footer */

void vhd_footer_parse(const uint8_t buf[VHD_FOOTER_BYTES], struct vhd_footer *f);
/*
 * Meaning of every field of a footer read from `path` (`what` names it in
 * messages: "footer", "footer copy"). `file_bytes` is the file's length, 0
 * when unknown (then offsets are not checked against it).
 */
int vhd_footer_validate(const struct vhd_footer *f, const char *path, const char *what,
                        uint64_t file_bytes, struct hv_err *err);
int vhd_footer_decode(const uint8_t buf[VHD_FOOTER_BYTES], struct vhd_footer *f,
                      const char *path, const char *what, uint64_t file_bytes,
                      struct hv_err *err);
/* Computes and stores the checksum (also into f->checksum). */
void vhd_footer_encode(struct vhd_footer *f, uint8_t buf[VHD_FOOTER_BYTES]);
/* A footer for a new image: cookie, features, version, creator, now, a fresh
 * uuid, sizes and the spec's CHS geometry of `size_bytes`. */
void vhd_footer_init(struct vhd_footer *f, enum vhd_type type, uint64_t size_bytes);
/* `old` at a new size, as every resize (offline and online) writes it: both
 * sizes (libvhdi takes the media size from the original size), the size's
 * geometry, and our creator (qemu then trusts the size over the geometry).
 * `vhd check` recognises an interrupted resize by exactly these fields. */
void vhd_footer_resized(struct vhd_footer *nf, const struct vhd_footer *old, uint64_t size_bytes);

/* ---------------------------------------------------------------- header */

void vhd_header_parse(const uint8_t buf[VHD_HEADER_BYTES], struct vhd_header *h);
/* Meaning of every field, against the (valid) footer and the file length. */
int vhd_header_validate(const struct vhd_header *h, const struct vhd_footer *f,
                        const char *path, uint64_t file_bytes, struct hv_err *err);
int vhd_header_decode(const uint8_t buf[VHD_HEADER_BYTES], const struct vhd_footer *f,
                      struct vhd_header *h, const char *path, uint64_t file_bytes,
                      struct hv_err *err);
void vhd_header_encode(struct vhd_header *h, uint8_t buf[VHD_HEADER_BYTES]);

/* Bytes a locator's data may occupy. data_space should be sectors, but
 * Windows writes bytes: a value below 512 is sectors, a multiple of 512
 * bytes (vhd-util's rule); anything else 0. */
uint64_t vhd_locator_space_bytes(const struct vhd_locator *loc);

/* Parent name (header, UTF-16BE) to UTF-8; -EILSEQ on invalid UTF-16. */
int vhd_parent_name_get(const struct vhd_header *h, char *out, size_t cap);
/* UTF-8 to the header's parent name; -ENAMETOOLONG if over 256 units,
 * -EILSEQ on invalid UTF-8. */
int vhd_parent_name_set(struct vhd_header *h, const char *utf8);

/* Locator payloads. W2ku/W2ru hold UTF-16LE Windows paths; MacX holds a
 * UTF-8 "file://" URL. Decoding turns either into a POSIX path as written
 * (backslashes to slashes, URL prefix and %XX escapes removed). */
int vhd_locator_decode_path(uint32_t code, const uint8_t *data, size_t len, char *out,
                            size_t cap);
/* Encode a POSIX path for `code`; returns the byte length or a negative errno. */
int vhd_locator_encode_path(uint32_t code, const char *path, uint8_t *out, size_t cap);

/* ---------------------------------------------------------------- layout */

/* Bytes of a block's sector bitmap, padded to a sector. */
static inline uint32_t vhd_bitmap_bytes(uint32_t block_bytes)
{
    return (uint32_t)HV_ALIGN_UP(block_bytes / HV_SECTOR_BYTES / 8, HV_SECTOR_BYTES);
}
/* Bytes of the BAT on disk, padded to a sector. */
static inline uint64_t vhd_bat_bytes(uint32_t max_table_entries)
{
    return HV_ALIGN_UP((uint64_t)max_table_entries * 4, HV_SECTOR_BYTES);
}
/* BAT entries a disk of `size_bytes` needs. */
static inline uint32_t vhd_blocks_for_size(uint64_t size_bytes, uint32_t block_bytes)
{
    return (uint32_t)HV_DIV_ROUND_UP(size_bytes, block_bytes);
}

/* CHS geometry per the VHD specification's algorithm (appendix). */
void vhd_geometry_for_size(uint64_t size_bytes, struct vhd_geometry *g);
static inline uint64_t vhd_geometry_bytes(const struct vhd_geometry *g)
{
    return (uint64_t)g->cylinders * g->heads * g->sectors_per_track * HV_SECTOR_BYTES;
}

/* ------------------------------------------------------------------- BAT */

/* Big-endian table to native entries (`count` of them). */
void vhd_bat_parse(const uint8_t *buf, uint32_t count, uint32_t *bat);
void vhd_bat_encode(const uint32_t *bat, uint32_t count, uint8_t *buf);

/*
 * Meaning of a BAT: every allocated entry's block (bitmap + data) lies inside
 * the file before the footer at `footer_offset`, overlaps none of the
 * metadata (footer copy, header, BAT, locators) and no other block. Each
 * problem goes to `report` (may be NULL) with the entry index (the later of an
 * overlapping pair) and a sentence without the file name; the return value is
 * the number of problems, or -ENOMEM.
 */
typedef void (*vhd_bat_problem_fn)(void *arg, uint32_t index, const char *msg);
int vhd_bat_validate(const uint32_t *bat, const struct vhd_footer *f, const struct vhd_header *h,
                     uint64_t footer_offset, vhd_bat_problem_fn report, void *arg);
/* First byte after the footer copy, header, BAT and every locator's space. */
uint64_t vhd_metadata_end(const struct vhd_footer *f, const struct vhd_header *h);

/* ---------------------------------------------------------------- bitmap */

/* Sector bitmaps are MSB first: sector n is bit 7 - n % 8 of byte n / 8. */
static inline bool vhd_bitmap_test(const uint8_t *bm, uint32_t sector)
{
    return (bm[sector >> 3] >> (7 - (sector & 7))) & 1;
}
void vhd_bitmap_set(uint8_t *bm, uint32_t first, uint32_t count);
void vhd_bitmap_clear(uint8_t *bm, uint32_t first, uint32_t count);
/* Length of the run of sectors from `first` (below `limit`) whose bit equals
 * the bit of `first`. Word at a time where it can. */
uint32_t vhd_bitmap_run(const uint8_t *bm, uint32_t first, uint32_t limit);
/* True when every bit of sectors [first, first+count) is set. */
bool vhd_bitmap_all_set(const uint8_t *bm, uint32_t first, uint32_t count);

/* -------------------------------------------------------------- utilities */

uint32_t vhd_time_now(void);                 /* seconds since 2000-01-01 UTC */
/* "abcd" from a 4-byte field, NUL-terminated, non-printables as '?'. */
void vhd_fourcc_text(const uint8_t in[4], char out[5]);

#endif /* HVSTOR_VHD_FORMAT_H */
