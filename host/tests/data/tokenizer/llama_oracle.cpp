// Reference oracle: reads records from stdin, each "<mode> <len>\n<bytes>" ; mode: t00,t11,t10,t01 (add_special,parse_special) -> ids line
// mode d0/d1: bytes are space-separated ids; outputs detokenize(special) as hex; mode p0/p1: per-token pieces hex
#include "llama.h"
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>
#include <iostream>
static void quiet(enum ggml_log_level, const char *, void *) {}
int main(int argc, char ** argv) {
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    auto mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "load failed\n"); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::string mode; size_t len;
    while (std::cin >> mode >> len) {
        std::cin.get();
        std::string s(len, '\0');
        std::cin.read(&s[0], len);
        if (mode[0] == 'e') {
            printf("bos=%d eos=%d eot=%d add_bos=%d add_eos=%d eog=", llama_vocab_bos(vocab), llama_vocab_eos(vocab), llama_vocab_eot(vocab), llama_vocab_get_add_bos(vocab), llama_vocab_get_add_eos(vocab));
            for (int i = 0; i < llama_vocab_n_tokens(vocab); i++) if (llama_vocab_is_eog(vocab, i)) printf("%d,", i);
            printf(" control=");
            for (int i = 0; i < llama_vocab_n_tokens(vocab); i++) if (llama_vocab_is_control(vocab, i)) printf("%d,", i);
            printf("\n");
        } else if (mode[0] == 't') {
            bool as = mode[1]=='1', ps = mode[2]=='1';
            std::vector<llama_token> toks(s.size() * 4 + 16);
            int n = llama_tokenize(vocab, s.data(), s.size(), toks.data(), toks.size(), as, ps);
            if (n < 0) { toks.resize(-n); n = llama_tokenize(vocab, s.data(), s.size(), toks.data(), toks.size(), as, ps); }
            for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", toks[i]);
            printf("\n");
        } else {
            bool sp = mode[1]=='1';
            std::vector<llama_token> ids; size_t p = 0;
            while (p < s.size()) { size_t q = s.find(' ', p); if (q == std::string::npos) q = s.size(); if (q > p) ids.push_back(atoi(s.substr(p, q-p).c_str())); p = q + 1; }
            std::string out;
            if (mode[0] == 'd') {
                std::vector<char> buf(ids.size()*64 + 64);
                int n = llama_detokenize(vocab, ids.data(), ids.size(), buf.data(), buf.size(), false, sp);
                if (n < 0) { buf.resize(-n); n = llama_detokenize(vocab, ids.data(), ids.size(), buf.data(), buf.size(), false, sp); }
                out.assign(buf.data(), n);
            } else {
                for (auto id : ids) { char b[512]; int n = llama_token_to_piece(vocab, id, b, sizeof b, 0, sp); if (n>0) out.append(b, n); out.push_back('\x01'); }
            }
            for (unsigned char c : out) printf("%02x", c);
            printf("\n");
        }
        fflush(stdout);
    }
    return 0;
}
