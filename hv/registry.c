/*
 * The registry: one JSON file per VM under DIR/vms, written atomically.
 *
 * Why one file per VM and not one file for all: a change to one VM rewrites
 * only that VM's file, so a crash in the middle can at worst lose that one
 * change (the rename either happened or not), and a damaged file names the
 * VM it belongs to. The directory is private (0700): definitions hold CHAP
 * secrets.
 */
#include "hv.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static int make_private_dir(const char *path, struct hv_err *err)
{
    struct stat st;

    if (mkdir(path, 0700) == 0)
        return 0;
    if (errno != EEXIST)
        return hv_err_errno(err, path, "mkdir");
    if (stat(path, &st) < 0)
        return hv_err_errno(err, path, "stat");
    if (!S_ISDIR(st.st_mode))
        return hv_err_set(err, -ENOTDIR, "%s: exists and is not a directory", path);
    return 0;
}

int hv_registry_open(struct hv_registry *reg, const char *dir, struct hv_err *err)
{
    int ret;

    memset(reg, 0, sizeof(*reg));
    if (strlen(dir) + 8 >= sizeof(reg->dir))
        return hv_err_set(err, -ENAMETOOLONG, "state directory '%.64s...': path too long", dir);
    snprintf(reg->dir, sizeof(reg->dir), "%s", dir);
    snprintf(reg->vms_dir, sizeof(reg->vms_dir), "%s/vms", dir);
    ret = make_private_dir(reg->dir, err);
    if (ret < 0)
        return ret;
    return make_private_dir(reg->vms_dir, err);
}

void hv_registry_path(const struct hv_registry *reg, const char *name, char out[4096 + 80])
{
    snprintf(out, 4096 + 80, "%s/%s.json", reg->vms_dir, name);
}

int hv_registry_save(struct hv_registry *reg, const struct hv_vm_config *vm, struct hv_err *err)
{
    char path[4096 + 80];
    json_t *obj;
    int ret;

    ret = hv_vm_config_validate(vm, err);
    if (ret < 0)
        return ret;
    hv_registry_path(reg, vm->name, path);
    obj = hv_vm_config_to_json(vm);
    if (!obj)
        return hv_err_set(err, -ENOMEM, "VM '%s': cannot build its definition", vm->name);
    ret = hv_json_write_file(path, obj, err);
    json_decref(obj);
    return ret;
}

static int fsync_dir(const char *dir, struct hv_err *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int ret = 0;

    if (fd < 0)
        return hv_err_errno(err, dir, "open");
    if (fsync(fd) < 0)
        ret = hv_err_errno(err, dir, "fsync");
    close(fd);
    return ret;
}

int hv_registry_remove(struct hv_registry *reg, const char *name, struct hv_err *err)
{
    char path[4096 + 80];

    hv_registry_path(reg, name, path);
    if (unlink(path) < 0)
        return errno == ENOENT ? 0 : hv_err_errno(err, path, "unlink");
    /* The unlink must be durable before we tell the user the VM is gone, or
     * a crash would bring it back with its ACL. */
    return fsync_dir(reg->vms_dir, err);
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(((const struct hv_vm_config *)a)->name, ((const struct hv_vm_config *)b)->name);
}

void hv_registry_free_list(struct hv_vm_config *list, int count)
{
    for (int i = 0; i < count; i++)
        hv_vm_config_free(&list[i]);
    free(list);
}

/* "<name>.json" with a valid VM name; temp files of an interrupted atomic
 * write (anything else, e.g. ".name.json.XXXXXX") are not definitions. */
static bool is_definition_file(const char *file, char name[HV_NAME_MAX + 1])
{
    size_t len = strlen(file);

    if (len < 6 || len - 5 > HV_NAME_MAX || strcmp(file + len - 5, ".json") != 0)
        return false;
    memcpy(name, file, len - 5);
    name[len - 5] = '\0';
    return hv_vm_name_check(name, NULL) == 0;
}

int hv_registry_load(struct hv_registry *reg, struct hv_vm_config **out, int *count,
                     struct hv_err *err)
{
    struct hv_vm_config *list = NULL;
    int n = 0;
    int cap = 0;
    DIR *dir;
    struct dirent *de;
    int ret = 0;

    *out = NULL;
    *count = 0;
    dir = opendir(reg->vms_dir);
    if (!dir)
        return hv_err_errno(err, reg->vms_dir, "opendir");
    while ((de = readdir(dir)) != NULL) {
        char name[HV_NAME_MAX + 1];
        char path[4096 + 80];
        json_t *obj = NULL;

        if (!is_definition_file(de->d_name, name))
            continue;
        hv_registry_path(reg, name, path);
        if (n == cap) {
            int new_cap = cap ? cap * 2 : 16;
            struct hv_vm_config *grown = realloc(list, sizeof(*list) * (size_t)new_cap);
            if (!grown) {
                ret = -ENOMEM;
                goto fail;
            }
            list = grown;
            cap = new_cap;
        }
        ret = hv_json_read_file(path, &obj, err);
        if (ret < 0)
            goto fail;
        ret = hv_vm_config_from_json(obj, path, &list[n], err);
        json_decref(obj);
        if (ret < 0)
            goto fail;
        n++;
        if (strcmp(list[n - 1].name, name) != 0) {
            ret = hv_err_set(err, -EINVAL, "%s: holds VM '%s', but the file name says '%s'",
                             path, list[n - 1].name, name);
            goto fail;
        }
    }
    closedir(dir);
    if (n > 1)
        qsort(list, (size_t)n, sizeof(*list), compare_names);
    *out = list;
    *count = n;
    return 0;

fail:
    closedir(dir);
    hv_registry_free_list(list, n);
    return ret;
}
