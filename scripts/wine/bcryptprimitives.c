/* A stand-in for Windows' bcryptprimitives.dll, for running Caretaker's Windows agent under Wine 8.
 *
 * Rust's standard library asks bcryptprimitives.dll for ProcessPrng (Windows 10 and later have it);
 * Wine 8.0 does not ship the DLL, so every Rust program fails to start. This exports ProcessPrng
 * and fills the buffer from RtlGenRandom (advapi32's SystemFunction036), which Wine implements
 * with the host's random source. Test rig only: never shipped, never installed on a real laptop.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
