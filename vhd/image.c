/*
 * Images of either format behind one call: detect raw or VHD from content,
 * open as a bdev. The offline operations (convert, compare, bench) take any
 * image the way qemu-img does, so they start here.
 */
#include "vhd.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char vhd_cookie[8] = {'c', 'o', 'n', 'e', 'c', 't', 'i', 'x'};

const char *vhd_image_format_name(enum vhd_image_format fmt)
{
    switch (fmt) {
    case VHD_FORMAT_RAW:
        return "raw";
    case VHD_FORMAT_VHD:
        return "vhd";
    case VHD_FORMAT_AUTO:
        break;
    }
    return "auto";
}

int vhd_image_format_parse(const char *name, enum vhd_image_format *fmt)
{
    if (!strcmp(name, "raw")) {
        *fmt = VHD_FORMAT_RAW;
    } else if (!strcmp(name, "vhd") || !strcmp(name, "vpc")) {
        /* "vpc" is what qemu-img calls the format; accept it so that
         * scripts written for qemu-img work unchanged. */
        *fmt = VHD_FORMAT_VHD;
    } else if (!strcmp(name, "auto")) {
        *fmt = VHD_FORMAT_AUTO;
    } else {
        return -EINVAL;
    }
    return 0;
}

static bool has_cookie_at(int fd, uint64_t offset)
{
    char buf[8];
    return hv_pread_full(fd, buf, sizeof(buf), offset) == 0 &&
           !memcmp(buf, vhd_cookie, sizeof(buf));
}

int vhd_detect_format(const char *path, enum vhd_image_format *fmt, struct hv_err *err)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, path, "open");
    if (fstat(fd, &st) < 0) {
        int ret = hv_err_errno(err, path, "stat");
        close(fd);
        return ret;
    }
    uint64_t size = S_ISBLK(st.st_mode) ? (uint64_t)lseek(fd, 0, SEEK_END) : (uint64_t)st.st_size;
    *fmt = VHD_FORMAT_RAW;
    /*
     * Dynamic and differencing images start with a footer copy; fixed ones
     * only end in a footer (512 bytes, or 511 in images from Virtual PC
     * before 2004, which qemu also accepts). A damaged image that still has
     * one of the two cookies is a VHD, so it fails loudly in the VHD code
     * instead of being copied as if it were raw data.
     */
    if (size >= 512 &&
        (has_cookie_at(fd, 0) || has_cookie_at(fd, size - 512) || has_cookie_at(fd, size - 511)))
        *fmt = VHD_FORMAT_VHD;
    close(fd);
    return 0;
}

int vhd_open_image(struct hv_reactor *r, const char *path, enum vhd_image_format fmt,
                   bool is_read_only, bool use_direct_io, struct bdev **out, struct hv_err *err)
{
    int ret;
    if (fmt == VHD_FORMAT_AUTO) {
        ret = vhd_detect_format(path, &fmt, err);
        if (ret < 0)
            return ret;
    }
    /* O_DIRECT first: a copy of many GiB should neither fill nor thrash the
     * page cache. File systems without it (tmpfs) fail the open with EINVAL;
     * those get buffered I/O. */
    for (int attempt = use_direct_io ? 0 : 1; attempt < 2; attempt++) {
        bool direct = attempt == 0;
        hv_err_clear(err);
        if (fmt == VHD_FORMAT_VHD) {
            struct vhd_open_options o = {.is_read_only = is_read_only, .no_direct_io = !direct};
            ret = vhd_open(r, path, &o, out, err);
        } else {
            struct bdev_raw_options o = {.is_read_only = is_read_only, .use_direct_io = direct};
            ret = bdev_raw_open(r, path, &o, out, err);
        }
        if (ret != -EINVAL || !direct)
            break;
    }
    return ret;
}
