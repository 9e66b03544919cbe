/** Eighth 3 of the simulator campaign of `npm test` (see campaign-slice.ts). */
import { campaignSlice } from './campaign-slice.js';

campaignSlice(2);
