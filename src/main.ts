import './ui/wt-app.ts';
