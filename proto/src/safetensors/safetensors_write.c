/* safetensors_write.c - the framing both safetensors writers share: header
 * closed and padded, length prefix, room for the data area. */
#include "proto_internal.h"

#include <stdio.h>
#include <string.h>

void ns__store_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

void ns__store_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

int ns__safetensors_header_tensor(ns_buf_t *h, const char *layer, const char *part,
                                  const char *dtype, int scalar, size_t channels, uint64_t begin,
                                  uint64_t end)
{
    char name[2 * NS_NAME_MAX + 32];
    int rc;
    snprintf(name, sizeof(name), "%s.%s", layer, part);
    if ((rc = ns_buf_append(h, ",", 1)) || (rc = ns__buf_append_json_string(h, name)))
        return rc;
    if (scalar)
        return ns_buf_printf(h, ":{\"dtype\":\"%s\",\"shape\":[],\"data_offsets\":[%llu,%llu]}",
                             dtype, (unsigned long long)begin, (unsigned long long)end);
    return ns_buf_printf(h, ":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[%llu,%llu]}",
                         dtype, channels, (unsigned long long)begin, (unsigned long long)end);
}

int ns__safetensors_frame(ns_buf_t *dst, ns_buf_t *header, uint64_t data_len, uint8_t **data)
{
    int rc;
    if ((rc = ns_buf_append(header, "}", 1)))
        return rc;
    /* Pad with spaces so the data area starts 8-byte aligned, as the
     * reference implementation does. */
    while (header->len % 8)
        if ((rc = ns_buf_append(header, " ", 1)))
            return rc;
    if (data_len > SIZE_MAX - 8 - header->len)
        return NS_ETOOLARGE;
    size_t total = 8 + header->len + (size_t)data_len;
    if ((rc = ns_buf_reserve(dst, total)))
        return rc;
    uint8_t *p = (uint8_t *)dst->data + dst->len;
    ns__store_le64(p, header->len);
    memcpy(p + 8, header->data, header->len);
    *data = p + 8 + header->len;
    dst->len += total;
    dst->data[dst->len] = '\0';
    return 0;
}
