/* wire_errors.c - lookups into NS_WIRE_ERROR_MAP (code <-> wire name, HTTP
 * status, default message). */
#include <normstat/wire_errors.h>

#include <stddef.h>
#include <string.h>

/* The CORE rows restate codes of normstat/errors.h: check they still agree. */
#define CHECK_CORE(constant, code)                                                                 \
    _Static_assert(constant == (code), #constant " differs from the core's value");
#define CHECK_PROTO(constant, code)
#define CHECK(owner, name, code, status, wire, msg) CHECK_##owner(NS_##name, code)
NS_WIRE_ERROR_MAP(CHECK)
#undef CHECK
#undef CHECK_PROTO
#undef CHECK_CORE

typedef struct error_row_s {
    int code;
    int http_status;
    const char *name;
    const char *message;
} error_row_t;

static const error_row_t error_rows[] = {
#define ROW(owner, name, code, status, wire, msg) {code, status, wire, msg},
    NS_WIRE_ERROR_MAP(ROW)
#undef ROW
};
#define N_ROWS (sizeof(error_rows) / sizeof(error_rows[0]))

static const error_row_t *find_row(int code)
{
    for (size_t i = 0; i < N_ROWS; i++)
        if (error_rows[i].code == code)
            return &error_rows[i];
    return NULL;
}

const char *ns_strerror(int code)
{
    const error_row_t *row = find_row(code);
    if (code == 0)
        return "success";
    return row ? row->message : "unknown error";
}

const char *ns_error_name(int code)
{
    const error_row_t *row = find_row(code);
    if (code == 0)
        return "ok";
    return row ? row->name : "unknown";
}

int ns_error_http_status(int code)
{
    const error_row_t *row = find_row(code);
    if (code == 0)
        return 200;
    return row ? row->http_status : 500;
}

int ns_error_from_name(const char *wire_name)
{
    for (size_t i = 0; wire_name && i < N_ROWS; i++)
        if (strcmp(error_rows[i].name, wire_name) == 0)
            return error_rows[i].code;
    return 0;
}
