/*
 * pt-cdb: send one CDB and print what came back, for the pass-through tests.
 *
 *   pt-cdb -p PORTAL -t TARGET -i IQN -l LUN -c HEX [-r BYTES | -w BYTES] [-I ISID24]
 *          [-f IN_FILE] [-o OUT_FILE]
 *
 * -c the CDB in hex ("1d00000000000"), -r expects BYTES of data-in, -w sends
 * BYTES of data-out (a pattern, or the first BYTES of -f IN_FILE); -o writes
 * the data-in that came back to OUT_FILE instead of printing it. Prints one line:
 *   "status 0x02 sense 5/20h/00h residual N" or "status 0x00 residual N"
 * (" overflow" after N when the target flagged the residual as an overflow)
 * or "login refused: ..." (exit 3). Exit 0 whenever the target answered.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "san.h"

int main(int argc, char **argv)
{
    struct san_session_options o = {0};
    struct san_sync *ss = NULL;
    struct san_cmd cmd;
    struct hv_err err = {0};
    const char *hex = NULL;
    const char *in_file = NULL;
    const char *out_file = NULL;
    uint32_t rbytes = 0, wbytes = 0;
    uint64_t lun = 0;
    uint8_t *buf;
    struct iovec iov;
    int c, ret;

    hv_log_set_level(HV_LOG_WARN);
    while ((c = getopt(argc, argv, "p:t:i:l:c:r:w:I:f:o:")) != -1) {
        switch (c) {
        case 'p': o.portal = optarg; break;
        case 't': o.target = optarg; break;
        case 'i': o.initiator = optarg; break;
        case 'l': lun = strtoull(optarg, NULL, 0); break;
        case 'c': hex = optarg; break;
        case 'r': rbytes = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'w': wbytes = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'I': o.isid_random = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'f': in_file = optarg; break;
        case 'o': out_file = optarg; break;
        default: return 2;
        }
    }
    if (!o.portal || !o.target || !o.initiator || !hex || strlen(hex) % 2 ||
        strlen(hex) / 2 > SAN_CDB_MAX) {
        fprintf(stderr, "usage: pt-cdb -p PORTAL -t TARGET -i IQN -l LUN -c HEX "
                        "[-r BYTES | -w BYTES]\n");
        return 2;
    }
    o.login_timeout_ms = 5000;
    o.replacement_timeout_ms = 5000;
    ret = san_sync_open(&o, &ss, &err);
    if (ret < 0) {
        printf("login refused: %s\n", hv_err_msg(&err, ret));
        return ret == -EACCES ? 3 : 1;
    }
    /* A new nexus meets POWER ON / RESET first: take the unit attentions
     * with TEST UNIT READY so that the command itself gets a real answer. */
    for (int i = 0; i < 4; i++) {
        memset(&cmd, 0, sizeof(cmd));
        cmd.lun = lun;
        cmd.cdb_len = 6;
        if (san_sync_command(ss, &cmd) != -EIO || san_sense_key(cmd.sense, cmd.sense_len) != 6)
            break;
    }
    memset(&cmd, 0, sizeof(cmd));
    cmd.lun = lun;
    cmd.cdb_len = (uint8_t)(strlen(hex) / 2);
    for (unsigned i = 0; i < cmd.cdb_len; i++) {
        unsigned v;
        sscanf(hex + 2 * i, "%2x", &v);
        cmd.cdb[i] = (uint8_t)v;
    }
    buf = calloc(1, (rbytes > wbytes ? rbytes : wbytes) + 1);
    for (uint32_t i = 0; i < wbytes; i++)
        buf[i] = (uint8_t)(0xA5 ^ i);
    if (in_file) {
        FILE *f = fopen(in_file, "rb");
        if (!f || fread(buf, 1, wbytes, f) != wbytes) {
            fprintf(stderr, "pt-cdb: %s: cannot read %u bytes\n", in_file, wbytes);
            return 2;
        }
        fclose(f);
    }
    iov.iov_base = buf;
    iov.iov_len = rbytes > wbytes ? rbytes : wbytes;
    cmd.dir = rbytes ? SAN_XFER_READ : wbytes ? SAN_XFER_WRITE : SAN_XFER_NONE;
    cmd.iov = &iov;
    cmd.iovcnt = 1;
    cmd.xfer_bytes = rbytes ? rbytes : wbytes;
    san_sync_command(ss, &cmd);
    if (cmd.transport != SAN_TRANSPORT_OK)
        printf("transport %d ", (int)cmd.transport);
    if (cmd.status == SAN_STATUS_CHECK_CONDITION)
        printf("status 0x%02x sense %x/%02xh/%02xh residual %u%s\n", cmd.status,
               san_sense_key(cmd.sense, cmd.sense_len),
               san_sense_asc_ascq(cmd.sense, cmd.sense_len) >> 8,
               san_sense_asc_ascq(cmd.sense, cmd.sense_len) & 0xFF, cmd.residual,
               cmd.is_overflow ? " overflow" : "");
    else
        printf("status 0x%02x residual %u%s\n", cmd.status, cmd.residual,
               cmd.is_overflow ? " overflow" : "");
    /* an overflow residual is what did not fit: the buffer is full */
    uint32_t got = cmd.is_overflow ? rbytes : rbytes - HV_MIN(cmd.residual, rbytes);
    if (rbytes && cmd.status == SAN_STATUS_GOOD && out_file) {
        FILE *f = fopen(out_file, "wb");
        if (!f || fwrite(buf, 1, got, f) != got) {
            fprintf(stderr, "pt-cdb: %s: cannot write\n", out_file);
            return 2;
        }
        fclose(f);
    } else if (rbytes && cmd.status == SAN_STATUS_GOOD) {
        printf("data ");
        for (uint32_t i = 0; i < got; i++)
            printf("%02x", buf[i]);
        printf("\n");
    }
    free(buf);
    san_sync_close(ss);
    return 0;
}
