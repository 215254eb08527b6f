/*
 * Fuzz target over the VHD metadata parsers: the input is a whole image
 * file. It goes through format.c's decoders directly (footer, header, BAT
 * validation on the bytes where they would sit), then, written to a real
 * file, through vhd_inspect, vhd_check and vhd_open (reading a little
 * through the engine when it opens). None of them may crash, leak, hang or
 * read out of bounds, whatever the bytes; sanitizers judge.
 */
#include "format.h"
#include "testlib.h"
#include "vhd.h"

#include <stdlib.h>
#include <unistd.h>

static void decode_in_place(const uint8_t *data, size_t size)
{
    struct vhd_footer f;
    struct vhd_header h;
    if (size < VHD_FOOTER_BYTES)
        return;
    /* The footer at the end, else the copy at the start. */
    if (vhd_footer_decode(data + size - VHD_FOOTER_BYTES, &f, "fuzz", "footer", size, NULL) < 0 &&
        vhd_footer_decode(data, &f, "fuzz", "footer copy", size, NULL) < 0)
        return;
    if (f.disk_type == VHD_TYPE_FIXED || f.data_offset > size ||
        size - f.data_offset < VHD_HEADER_BYTES)
        return;
    if (vhd_header_decode(data + f.data_offset, &f, &h, "fuzz", size, NULL) < 0)
        return;
    char name[1024];
    vhd_parent_name_get(&h, name, sizeof(name));
    uint64_t bat_bytes = vhd_bat_bytes(h.max_table_entries);
    if (h.table_offset > size || size - h.table_offset < bat_bytes)
        return;
    uint32_t *bat = malloc((size_t)h.max_table_entries * 4 + 4);
    if (!bat)
        return;
    vhd_bat_parse(data + h.table_offset, h.max_table_entries, bat);
    vhd_bat_validate(bat, &f, &h, size - VHD_FOOTER_BYTES, NULL, NULL);
    free(bat);
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        const struct vhd_locator *loc = &h.locators[i];
        char path[4096];
        if (loc->data_offset < size && loc->data_length <= size - loc->data_offset)
            vhd_locator_decode_path(loc->code, data + loc->data_offset, loc->data_length, path,
                                    sizeof(path));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[512];
    if (!path[0])
        snprintf(path, sizeof(path), "%s", t_path("fuzz.vhd"));
    decode_in_place(data, size);

    if (t_write_file(path, data, size) < 0)
        return 0;

    struct vhd_info *info = malloc(sizeof(*info));
    struct hv_err err = {0};
    if (info && vhd_inspect(path, info, &err) == 0) {
        json_t *j = vhd_info_to_json(info);
        json_decref(j);
    }
    free(info);

    struct vhd_check_report rep;
    int check_rc = vhd_check(path, &rep, &err);
    if (check_rc >= 0)
        vhd_check_report_free(&rep);

    /* The engine's open costs an io_setup/io_destroy pair, and io_destroy
     * waits for an RCU grace period (tens of ms), which would make the
     * engine path dominate the run time. One input in four whose metadata
     * is sound goes through it, and one in sixteen of the rest (the engine
     * must refuse those cleanly), chosen by content so a run reproduces. */
    struct hv_reactor *r;
    struct bdev *bd;
    bool is_sound = check_rc == VHD_CHECK_CLEAN;
    uint64_t pick = hv_xxh3_64(data, size) % 16;
    if ((is_sound ? pick % 4 == 0 : pick == 0) && hv_reactor_create(&r) == 0) {
        struct vhd_open_options o = {.is_read_only = true, .no_direct_io = true};
        if (vhd_open(r, path, &o, &bd, &err) == 0) {
            /* A little of the start and the end through the engine. */
            uint8_t *buf = hv_alloc_aligned(65536);
            uint64_t n = HV_MIN(65536, bd->size_bytes);
            n -= n % 512;
            if (buf && n) {
                bdev_read_sync(bd, 0, buf, n);
                bdev_read_sync(bd, bd->size_bytes - n, buf, n);
                uint32_t st;
                uint64_t len;
                int depth;
                bdev_block_status_sync(bd, 0, bd->size_bytes - bd->size_bytes % 512, &st, &len,
                                       &depth);
            }
            free(buf);
            bdev_close(bd);
        }
        hv_reactor_destroy(r);
    }
    return 0;
}
