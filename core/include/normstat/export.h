/* normstat/export.h - symbol visibility for the project's shared libraries.
 * Libraries are built with -fvisibility=hidden; NS_API marks the exports. */
#ifndef NORMSTAT_EXPORT_H
#define NORMSTAT_EXPORT_H

#if defined(__GNUC__) && __GNUC__ >= 4
#define NS_API __attribute__((visibility("default")))
#else
#define NS_API
#endif

#endif /* NORMSTAT_EXPORT_H */
