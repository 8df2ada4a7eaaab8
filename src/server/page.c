/* page.c: the chat page served at GET / (chat.html: one file with its CSS
 * and JS), embedded in the binary by the assembler's .incbin so that the
 * page stays an ordinary HTML file to edit. The Makefile rebuilds this
 * object when chat.html changes. The symbols are hidden as -fvisibility=hidden
 * would make them: the page is the server's, not part of the API. */
#include <stddef.h>

__asm__(".section .rodata\n"
        ".global srv_page_html\n"
        ".hidden srv_page_html\n"
        ".type srv_page_html, @object\n"
        "srv_page_html:\n"
        ".incbin \"src/server/chat.html\"\n"
        "1:\n"
        ".byte 0\n"
        ".balign 8\n"
        ".global srv_page_html_len\n"
        ".hidden srv_page_html_len\n"
        ".type srv_page_html_len, @object\n"
        "srv_page_html_len:\n"
        ".quad 1b - srv_page_html\n"
        ".previous\n");

/* The length above is written as a .quad. */
_Static_assert(sizeof(size_t) == 8, "srv_page_html_len is emitted as 8 bytes");
