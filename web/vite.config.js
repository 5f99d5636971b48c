import { defineConfig } from 'vite';

// Static files for the nginx gateway: `npm run build` writes dist/ (index.html + hashed assets/).
export default defineConfig({
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022', chunkSizeWarningLimit: 400 },
  server: { proxy: { '/market': 'http://127.0.0.1:3000', '/orders': 'http://127.0.0.1:3000', '/stream': { target: 'ws://127.0.0.1:3000', ws: true } } },
});
